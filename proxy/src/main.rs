//! The `tollgate` binary: parses the command line and hands it to the library.

/// mimalloc instead of glibc's allocator: a request allocates a few hundred small objects (headers, the
/// policy input, the decision record) across two worker threads, and glibc's malloc/free with its
/// consolidation was a quarter of tollgate's CPU per request under load (see BENCHMARKS.md). Built with
/// `no_thp` (mimalloc turns transparent huge pages off for the process): without it, tollgate was ~25 MiB
/// more resident at start and ~30 MiB more with 1,000 idle agent connections.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
