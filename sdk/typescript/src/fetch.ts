import { x402Client, x402HTTPClient } from "@x402/core/client";
import type { PaymentPayload, PaymentRequired, SettleResponse } from "@x402/core/types";
import { PAYMENT_SESSION, REPLAYED, SCHEME } from "./constants.js";
import type { ChannelScheme } from "./scheme.js";

/**
 * An `x402HTTPClient` for `wrapFetchWithPayment` / `wrapAxiosWithPayment` that, on a 402 from a route whose
 * credit window still has prepaid uses, retries with `PAYMENT-SESSION` instead of signing a new voucher.
 */
export function channelHttpClient(client: x402Client, scheme: ChannelScheme): x402HTTPClient {
  const http = new ChannelHttpClient(client, scheme);
  http.onPaymentRequired(async ({ paymentRequired }) => {
    for (const req of paymentRequired.accepts) {
      const session = await scheme.nextSession(req);
      if (session) return { headers: { [PAYMENT_SESSION]: session.header } };
    }
    return undefined;
  });
  return http;
}

/**
 * An `x402HTTPClient` that also understands the node's answer to a resend of a voucher it already served
 * (`x402-replayed`): the scheme skips a nonce, and a `409 already_served` counts as recovered, so that the payment
 * wrapper pays the request again.
 */
class ChannelHttpClient extends x402HTTPClient {
  constructor(
    client: x402Client,
    private readonly scheme: ChannelScheme,
  ) {
    super(client);
  }

  override async processPaymentResult(
    payload: PaymentPayload,
    getHeader: (name: string) => string | null | undefined,
    status: number,
  ): Promise<{ recovered: boolean; settleResponse?: SettleResponse }> {
    const result = await super.processPaymentResult(payload, getHeader, status);
    if (getHeader(REPLAYED) && payload.accepted && (await this.scheme.replayed(payload.accepted, payload.payload)) && status === 409) {
      return { ...result, recovered: true };
    }
    return result;
  }
}

export interface ChannelFetchOptions {
  /** Paid attempts per request after corrective 402s (each resynchronises first). Default 3. */
  maxAttempts?: number;
}

/**
 * Like `wrapFetchWithPayment`, but remembers each route's terms: once a route has answered 402, later requests to
 * it go out already paid (one HTTP request per payment), from the credit window's session when there is one.
 * Only requests whose body can be replayed (none, a string, bytes, URLSearchParams) are supported.
 */
export function wrapFetchWithChannel(
  fetchImpl: typeof fetch,
  client: x402Client,
  scheme: ChannelScheme,
  options: ChannelFetchOptions = {},
): typeof fetch {
  const http = new ChannelHttpClient(client, scheme);
  const terms = new Map<string, PaymentRequired>();
  const maxAttempts = options.maxAttempts ?? 3;

  const routeKey = (request: Request) => {
    const u = new URL(request.url);
    return `${request.method} ${u.origin}${u.pathname}`;
  };

  const parse402 = async (response: Response): Promise<PaymentRequired | undefined> => {
    let body: unknown;
    try {
      const text = await response.clone().text();
      if (text) body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    try {
      return http.getPaymentRequiredResponse((n) => response.headers.get(n), body);
    } catch {
      return undefined;
    }
  };

  return async (input, init) => {
    const original = new Request(input, init);
    const route = routeKey(original);
    let required = terms.get(route);
    if (!required) {
      const first = await fetchImpl(original.clone());
      if (first.status !== 402) return first;
      required = await parse402(first);
      if (!required) return first;
      required = withoutChannelState(required);
      if (!required.accepts.some((a) => a.scheme === SCHEME)) return first;
      terms.set(route, required);
    }
    // A prepaid window: no signature at all (waiting for the grant of a voucher in flight, if any).
    for (const req of required.accepts) {
      const session = await scheme.nextSession(req, true);
      if (!session) continue;
      const attempt = original.clone();
      attempt.headers.set(PAYMENT_SESSION, session.header);
      let res: Response;
      try {
        res = await fetchImpl(attempt);
      } finally {
        session.done();
      }
      if (res.status !== 402) return res;
      const fresh = await parse402(res);
      if (fresh) required = withoutChannelState(fresh);
      terms.set(route, required);
      break;
    }
    let last: Response | undefined;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      let payload: PaymentPayload;
      try {
        payload = await client.createPaymentPayload(required);
      } catch (e) {
        for (const req of required.accepts) scheme.cancelReservation(req);
        throw e;
      }
      const paid = original.clone();
      for (const [k, v] of Object.entries(http.encodePaymentSignatureHeader(payload))) paid.headers.set(k, v);
      try {
        last = await fetchImpl(paid);
      } catch (e) {
        if (payload.accepted) scheme.abandon(payload.accepted, payload.payload);
        throw e;
      }
      const result = await http.processPaymentResult(payload, (n) => last!.headers.get(n), last.status);
      if (result.recovered && last.status === 409) {
        // The node had served this very voucher (this client lost or restored its state): pay again.
        await last.body?.cancel();
        continue;
      }
      if (last.status !== 402) return last;
      const fresh = await parse402(last);
      if (fresh) {
        // Keep the newest terms, without a channel state that is only meant for this answer (the next payment
        // echoes the route's terms, not the correction).
        required = withoutChannelState(fresh);
        terms.set(route, required);
      }
      if (!result.recovered) return last;
    }
    return last!;
  };
}

/** The terms of a 402 without the corrective `extra.channel` of our scheme's requirements. */
export function withoutChannelState(required: PaymentRequired): PaymentRequired {
  return {
    ...required,
    accepts: required.accepts.map((a) => {
      if (a.scheme !== SCHEME || !a.extra || !("channel" in a.extra)) return a;
      const { channel: _, ...extra } = a.extra;
      return { ...a, extra };
    }),
  };
}
