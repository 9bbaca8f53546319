import type { x402Client } from "@x402/core/client";
import { decodePaymentSignatureHeader } from "@x402/core/http";
import type { PaymentPayload, PaymentRequired } from "@x402/core/types";
import { PAYMENT_SESSION } from "./constants.js";
import { channelHttpClient } from "./fetch.js";
import type { ChannelScheme } from "./scheme.js";

/** The parts of an axios instance this module uses (no runtime dependency on axios). */
export interface AxiosLike {
  interceptors: {
    response: {
      use(onFulfilled: (r: AxiosResponseLike) => unknown, onRejected: (e: AxiosErrorLike) => unknown): number;
    };
  };
  request(config: AxiosConfigLike): Promise<AxiosResponseLike>;
}
interface AxiosHeadersLike {
  get(name: string): unknown;
  set(name: string, value: string): unknown;
  has(name: string): boolean;
  delete(name: string): unknown;
}
interface AxiosConfigLike {
  headers: AxiosHeadersLike;
  [key: string]: unknown;
}
interface AxiosResponseLike {
  status: number;
  headers: Record<string, unknown>;
  data: unknown;
  config: AxiosConfigLike;
}
interface AxiosErrorLike {
  response?: AxiosResponseLike;
  config?: AxiosConfigLike;
}

const RETRIED = "__x402ChannelRetry";
/** Paid retries of one request: a node that served the very voucher (409), then its corrective 402. */
const MAX_RETRIES = 2;

/** A copy of `config` with its own headers (axios shares the headers object between spreads), one retry more. */
function copy(config: AxiosConfigLike): AxiosConfigLike {
  const Headers = config.headers.constructor as new (h: AxiosHeadersLike) => AxiosHeadersLike;
  return { ...config, headers: new Headers(config.headers), [RETRIED]: retries(config) + 1 };
}

function retries(config: AxiosConfigLike): number {
  return typeof config[RETRIED] === "number" ? config[RETRIED] : 0;
}

/**
 * Prepares an axios instance for `wrapAxiosWithPayment` (call this FIRST, then wrap: response interceptors run in
 * the order they were added). `@x402/axios` does not report paid responses to the client's hooks, so this
 * interceptor does: it feeds each `PAYMENT-RESPONSE` (receipts, credit-window sessions) and each corrective 402
 * (resynchronisation, then one paid retry) to the scheme, and pays a 402 from a prepaid credit window with
 * `PAYMENT-SESSION` before a new voucher is signed.
 */
export function withChannelAxios<T>(axiosInstance: T, client: x402Client, scheme: ChannelScheme): T {
  const instance = axiosInstance as unknown as AxiosLike;
  const http = channelHttpClient(client, scheme);
  const header = (r: AxiosResponseLike) => (name: string) => {
    const v = r.headers[name] ?? r.headers[name.toLowerCase()];
    return typeof v === "string" ? v : null;
  };
  const sentPayload = (config: AxiosConfigLike): PaymentPayload | undefined => {
    const sig = config.headers.get("PAYMENT-SIGNATURE");
    if (typeof sig !== "string") return undefined;
    try {
      return decodePaymentSignatureHeader(sig);
    } catch {
      return undefined;
    }
  };
  instance.interceptors.response.use(
    async (response) => {
      const payload = sentPayload(response.config);
      if (payload) await http.processPaymentResult(payload, header(response), response.status);
      return response;
    },
    async (error) => {
      const response = error.response;
      const config = error.config;
      if (!response || (response.status !== 402 && response.status !== 409) || !config) throw error;
      const payload = sentPayload(config);
      if (payload) {
        // A paid request refused: resynchronise (or, after a 409 for a voucher the node had served, skip a nonce),
        // and retry with a fresh voucher.
        const result = await http.processPaymentResult(payload, header(response), response.status);
        if (!result.recovered || retries(config) >= MAX_RETRIES) throw error;
        const required: PaymentRequired =
          response.status === 409 && payload.accepted
            ? { x402Version: payload.x402Version, resource: payload.resource!, accepts: [payload.accepted] }
            : http.getPaymentRequiredResponse(header(response), response.data);
        const fresh = await client.createPaymentPayload(required);
        const retry = copy(config);
        for (const [k, v] of Object.entries(http.encodePaymentSignatureHeader(fresh))) retry.headers.set(k, v);
        return instance.request(retry);
      }
      if (config.headers.has(PAYMENT_SESSION)) {
        // The window is gone: let the payment wrapper after this one pay with a voucher.
        config.headers.delete(PAYMENT_SESSION);
        throw error;
      }
      if (response.status !== 402 || retries(config) > 0) throw error;
      // An unpaid request: a prepaid credit window pays it without a signature.
      let required;
      try {
        required = http.getPaymentRequiredResponse(header(response), response.data);
      } catch {
        throw error;
      }
      for (const req of required.accepts) {
        const session = await scheme.nextSession(req);
        if (!session) continue;
        const retry = copy(config);
        retry.headers.set(PAYMENT_SESSION, session.header);
        return instance.request(retry);
      }
      throw error;
    },
  );
  return axiosInstance;
}
