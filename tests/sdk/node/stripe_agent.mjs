// An agent program for tollgate's SDK compatibility suite (tests/tests/sdk.rs): the real `stripe` npm SDK
// (pinned in package-lock.json) pointed at tollgate as deploy/AGENTS.md says, performing one case and printing
// ONE JSON line that says what the SDK returned or raised.
//
// Usage: node stripe_agent.mjs CASE (the suite copies this file next to the cached node_modules, so the bare
// import below resolves to the pinned package).
// Environment: TG_PROXY (tollgate's agent listener, http://127.0.0.1:PORT), TG_AGENT_KEY (the tg_ key),
// TG_PARAMS (a JSON object of case parameters: amount, idempotency_key, approval_id, max_retries, limit, run).
//
// stripe-node has no base-path option: it requests host:port + /v1/..., so, as deploy/AGENTS.md shows, a
// wrapper around the SDK's own Node HTTP client puts tollgate's /stripe prefix in front of every path.
import Stripe from "stripe";

const WANTED_HEADERS = [
  "tollgate-decision",
  "tollgate-approval-id",
  "idempotency-key",
  "idempotent-replayed",
  "stripe-should-retry",
  "retry-after",
  "x-upstream",
];

function pickHeaders(headers) {
  const out = {};
  if (!headers) return out;
  const lowered = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  for (const name of WANTED_HEADERS) {
    if (lowered[name] !== undefined && lowered[name] !== null) out[name] = lowered[name];
  }
  return out;
}

function describeError(e) {
  const raw = e.raw && typeof e.raw === "object" ? e.raw : {};
  // e.raw is what the SDK kept of the error body: the members of its `error` object (plus headers,
  // statusCode, requestId), so a sibling `tollgate` object of the body does not reach the agent.
  const { headers: _h, ...rawWithoutHeaders } = raw;
  return {
    class: e.constructor.name,
    type: e.type,
    status: e.statusCode ?? null,
    message: e.message,
    code: e.code ?? null,
    error_type: e.rawType ?? null,
    tollgate: raw.tollgate ?? e.tollgate ?? null,
    raw: rawWithoutHeaders,
    headers: pickHeaders(e.headers),
  };
}

function client(params) {
  const proxy = new URL(process.env.TG_PROXY);
  const node = Stripe.createNodeHttpClient();
  const viaTollgate = Object.create(node); // keeps getClientName() and the rest of the client
  // Attribution headers (Tollgate-Run) are added here too, as deploy/AGENTS.md shows.
  const extra = params.run ? { "Tollgate-Run": params.run } : {};
  viaTollgate.makeRequest = (host, port, path, method, headers, body, protocol, timeout) =>
    node.makeRequest(host, port, `/stripe${path}`, method, { ...headers, ...extra }, body, protocol, timeout);
  const options = {
    host: proxy.hostname,
    port: Number(proxy.port),
    protocol: "http",
    httpClient: viaTollgate,
  };
  if (params.max_retries !== undefined && params.max_retries !== null) options.maxNetworkRetries = params.max_retries;
  return new Stripe(process.env.TG_AGENT_KEY, options);
}

function requestOptions(params) {
  const options = {};
  if (params.idempotency_key) options.idempotencyKey = params.idempotency_key;
  if (params.approval_id) options.headers = { "Tollgate-Approval": params.approval_id };
  return options;
}

function intent(pi) {
  return { id: pi.id, amount: pi.amount ?? null, headers: pickHeaders(pi.lastResponse?.headers) };
}

function paymentParams(params) {
  return { amount: params.amount, currency: params.currency ?? "usd" };
}

async function run(kase, params) {
  const stripe = client(params);
  switch (kase) {
    case "customers_list": {
      // Auto-pagination: for await follows has_more with starting_after=<last id>.
      const ids = [];
      for await (const customer of stripe.customers.list({ limit: params.limit ?? 2 })) ids.push(customer.id);
      return { ids };
    }
    case "payment_create":
      return intent(await stripe.paymentIntents.create(paymentParams(params), requestOptions(params)));
    case "payment_twice": {
      // The same call twice with one Idempotency-Key, as an agent retrying after a lost answer would.
      const first = await stripe.paymentIntents.create(paymentParams(params), requestOptions(params));
      const second = await stripe.paymentIntents.create(paymentParams(params), requestOptions(params));
      return { first: intent(first), second: intent(second) };
    }
    default:
      throw new Error(`unknown case ${kase}`);
  }
}

const kase = process.argv[2];
const params = JSON.parse(process.env.TG_PARAMS || "{}");
const out = {
  sdk: `node stripe ${Stripe.PACKAGE_VERSION}`,
  case: kase,
  default_max_retries: new Stripe("tg_unused").getMaxNetworkRetries(),
};
try {
  out.result = await run(kase, params);
  out.ok = true;
} catch (e) {
  if (!(e instanceof Stripe.errors.StripeError)) throw e;
  out.ok = false;
  out.error = describeError(e);
}
// Exit once the line is written: a keep-alive socket the SDK still holds (stripe-node leaves the one whose
// failed response it retried unread) would otherwise keep Node alive until tollgate closes it as idle.
process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(0));
