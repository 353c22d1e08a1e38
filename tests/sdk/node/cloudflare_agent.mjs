// An agent program for tollgate's SDK compatibility suite (tests/tests/sdk.rs): the real `cloudflare` npm SDK
// (pinned in package-lock.json) pointed at tollgate as deploy/AGENTS.md says, performing one case and printing
// ONE JSON line that says what the SDK returned or raised.
//
// Usage: node cloudflare_agent.mjs CASE (the suite copies this file next to the cached node_modules, so the
// bare import below resolves to the pinned package).
// Environment: TG_CF_BASE (tollgate's Cloudflare base, .../cloudflare/client/v4), TG_AGENT_KEY (the tg_ key),
// TG_PARAMS (a JSON object of case parameters: zone, name, type, content, max_retries, approval_id, run).
import Cloudflare from "cloudflare";
import { VERSION } from "cloudflare/version";

const WANTED_HEADERS = ["tollgate-decision", "x-should-retry", "retry-after", "x-upstream"];

function pickHeaders(headers) {
  const out = {};
  if (!headers) return out;
  for (const name of WANTED_HEADERS) {
    const value = typeof headers.get === "function" ? headers.get(name) : headers[name];
    if (value !== null && value !== undefined) out[name] = value;
  }
  return out;
}

function describeError(e) {
  const body = e.error && typeof e.error === "object" ? e.error : null;
  return {
    class: e.constructor.name,
    status: e.status ?? null,
    message: e.message,
    body,
    errors: (e.errors ?? []).map((err) => ({ code: err.code ?? null, message: err.message ?? null })),
    tollgate: body?.tollgate ?? null,
    headers: pickHeaders(e.headers),
  };
}

function client(params) {
  // An unchanged program: base URL, token and default headers all come from the environment
  // (CLOUDFLARE_BASE_URL, CLOUDFLARE_API_TOKEN, CLOUDFLARE_CUSTOM_HEADERS).
  if (params.from_env) return new Cloudflare({ maxRetries: 0 });
  const options = { apiToken: process.env.TG_AGENT_KEY, baseURL: process.env.TG_CF_BASE };
  if (params.max_retries !== undefined && params.max_retries !== null) options.maxRetries = params.max_retries;
  if (params.run) options.defaultHeaders = { "Tollgate-Run": params.run };
  return new Cloudflare(options);
}

function requestOptions(params) {
  return params.approval_id ? { headers: { "Tollgate-Approval": params.approval_id } } : undefined;
}

async function run(kase, params) {
  const cf = client(params);
  switch (kase) {
    case "zones_list": {
      // Auto-pagination: for await fetches page 2, 3, ... until a page comes back empty.
      const ids = [];
      for await (const zone of cf.zones.list({ per_page: params.per_page ?? 2 })) ids.push(zone.id);
      return { ids };
    }
    case "dns_create": {
      const { data, response } = await cf.dns.records
        .create(
          {
            zone_id: params.zone,
            type: params.type ?? "A",
            name: params.name,
            content: params.content ?? "192.0.2.10",
            ttl: 300,
            proxied: false,
          },
          requestOptions(params),
        )
        .withResponse();
      return { id: data.id, name: data.name, headers: pickHeaders(response.headers) };
    }
    case "zone_get": {
      const { data, response } = await cf.zones.get({ zone_id: params.zone }).withResponse();
      return { id: data.id, headers: pickHeaders(response.headers) };
    }
    default:
      throw new Error(`unknown case ${kase}`);
  }
}

const kase = process.argv[2];
const params = JSON.parse(process.env.TG_PARAMS || "{}");
const out = { sdk: `node cloudflare ${VERSION}`, case: kase };
try {
  out.result = await run(kase, params);
  out.ok = true;
} catch (e) {
  if (!(e instanceof Cloudflare.APIError)) throw e;
  out.ok = false;
  out.error = describeError(e);
}
// Exit once the line is written: a keep-alive socket the SDK still holds (stripe-node leaves the one whose
// failed response it retried unread) would otherwise keep Node alive until tollgate closes it as idle.
process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(0));
