import type {
  AssetAmount,
  Network,
  PaymentRequirements,
  Price,
  SchemeNetworkServer,
  SchemeServerHooks,
  SupportedKind,
} from "@x402/core/types";
import type { SchemePaymentRequiredContext } from "@x402/core/server";
import { getAddress, isAddress, type Address } from "viem";
import { DOMAIN_NAME, DOMAIN_VERSION, SCHEME } from "./constants.js";
import type { ChannelState } from "./scheme.js";

/** Settings of {@link ChannelVoucherServerScheme}. */
export interface ChannelVoucherServerOptions {
  /** The token prices are paid in (the node's `[payment] asset`). */
  asset: Address;
  /** The token's decimals, for prices written as money (`"$0.001"`, `0.001`). Default 6. */
  decimals?: number;
  /**
   * The `PaymentChannel` contract. Default: the one the facilitator reports in `/supported`; when given, it must be
   * the facilitator's (the node verifies vouchers under its own contract only).
   */
  contract?: Address;
  /** The token's EIP-712 domain name (`extra.name`, as in the `exact` scheme). Default: absent. */
  tokenName?: string;
  /** The token's EIP-712 domain version (`extra.version`). Default: absent. */
  tokenVersion?: string;
  /** The shortest challenge period the node accepts for a channel (its `[payment] min_challenge_period`). Default 3600. */
  minChallengePeriod?: number;
  /** The smallest deposit the node accepts (its `[payment] min_deposit`), in token base units. Default 0. */
  minDeposit?: bigint | string;
}

/** How many payment states `enrichPaymentRequiredResponse` can still find (one per refused payment in flight). */
const MAX_PENDING_STATES = 1024;

/**
 * The `channel-voucher` scheme for the official resource server (`x402ResourceServer.register(network, scheme)`),
 * with the x402 Channels node as its facilitator: the node's `/facilitator/verify` reserves each voucher and
 * `/facilitator/settle` commits it, exactly as its own gateway does. So an Express app charges in one line:
 *
 * ```ts
 * app.use(paymentMiddleware(routes, new x402ResourceServer(new HTTPFacilitatorClient({ url: node + "/facilitator",
 *   createAuthHeaders })).register("eip155:8453", new ChannelVoucherServerScheme({ asset }))));
 * ```
 *
 * with routes such as `{ "GET /weather": { accepts: { scheme: "channel-voucher", network: "eip155:8453", payTo:
 * <the node's provider address>, price: "$0.001" } } }`. A refused voucher is answered with a 402 whose requirement
 * carries the node's corrective `extra.channel` (the client's own latest signed state), so that the client
 * resynchronises and pays on. Credit windows (`PAYMENT-SESSION`) are a feature of the node's gateway, not of the
 * facilitator API: requirements built here advertise none.
 */
export class ChannelVoucherServerScheme implements SchemeNetworkServer {
  readonly scheme = SCHEME;
  /** Vouchers have no on-wire asset transfer method: the SDK's placeholder. */
  readonly defaultAssetTransferMethod = "default";
  /** Verify (the node reserves the voucher) before the handler, settle (the node commits) after it. */
  readonly paymentFlows = { default: { supported: ["authorization"], default: "authorization" } } as const;
  /** The corrective state of a 402 is not part of the route's terms: a payment echoing one still matches. */
  readonly dynamicExtraFields = ["channel"];
  readonly schemeHooks: SchemeServerHooks;
  readonly enrichPaymentRequiredResponse: (ctx: SchemePaymentRequiredContext) => Promise<PaymentRequirements[] | void>;

  /** The facilitator's corrective states of refused payments, by voucher signature, until their 402 is built. */
  private readonly pending = new Map<string, ChannelState>();
  private readonly options: ChannelVoucherServerOptions;

  constructor(options: ChannelVoucherServerOptions) {
    if (!isAddress(options.asset)) throw new Error(`asset ${String(options.asset)} is not an address`);
    if (options.contract !== undefined && !isAddress(options.contract)) {
      throw new Error(`contract ${String(options.contract)} is not an address`);
    }
    this.options = { ...options, asset: getAddress(options.asset) };
    this.schemeHooks = {
      onAfterVerify: async (ctx) => {
        const state = (ctx.result.extra as { channel?: ChannelState } | undefined)?.channel;
        const signature = (ctx.paymentPayload.payload as { signature?: unknown }).signature;
        if (ctx.result.isValid || !state || typeof signature !== "string") return;
        if (this.pending.size >= MAX_PENDING_STATES) this.pending.delete(this.pending.keys().next().value!);
        this.pending.set(signature, structuredClone(state) as ChannelState);
      },
    };
    this.enrichPaymentRequiredResponse = async (ctx) => {
      const signature = (ctx.paymentPayload?.payload as { signature?: unknown } | undefined)?.signature;
      if (typeof signature !== "string") return;
      const state = this.pending.get(signature);
      if (!state) return;
      this.pending.delete(signature);
      const accepted = ctx.paymentPayload!.accepted;
      return ctx.requirements.map((r) =>
        r.scheme === SCHEME &&
        r.network === accepted.network &&
        r.asset.toLowerCase() === accepted.asset.toLowerCase() &&
        r.payTo.toLowerCase() === accepted.payTo.toLowerCase()
          ? { ...r, extra: { ...r.extra, channel: state } }
          : r,
      );
    };
  }

  /** A price as money (`"$0.001"`, `"0.001"`, `0.001`: in the token's units) or as `{ amount, asset }` in base units. */
  async parsePrice(price: Price, network: Network): Promise<AssetAmount> {
    if (!network.startsWith("eip155:")) throw new Error(`${SCHEME} does not support network ${network}`);
    if (typeof price === "object" && price !== null) {
      if (!/^[1-9][0-9]*$/.test(price.amount)) throw new Error(`price amount ${price.amount} is not a positive integer`);
      return { amount: price.amount, asset: getAddress(price.asset) };
    }
    return { amount: toBaseUnits(price, this.options.decimals ?? 6), asset: this.options.asset };
  }

  getAssetDecimals(asset: string): number | undefined {
    return asset.toLowerCase() === this.options.asset.toLowerCase() ? (this.options.decimals ?? 6) : undefined;
  }

  /** Adds the channel terms: the facilitator's contract and domain, the token's domain, the node's minimums. */
  async enhancePaymentRequirements(req: PaymentRequirements, kind: SupportedKind): Promise<PaymentRequirements> {
    const contract = this.contractOf(kind);
    const o = this.options;
    const extra: Record<string, unknown> = {
      ...req.extra,
      ...(o.tokenName !== undefined ? { name: o.tokenName } : {}),
      ...(o.tokenVersion !== undefined ? { version: o.tokenVersion } : {}),
      contract,
      domain: { name: DOMAIN_NAME, version: DOMAIN_VERSION },
      minChallengePeriod: o.minChallengePeriod ?? 3600,
      minDeposit: String(o.minDeposit ?? 0),
      pricing: "exact",
    };
    return { ...req, asset: getAddress(req.asset), payTo: getAddress(req.payTo), extra };
  }

  validateFacilitatorSupport(_network: Network, kind: SupportedKind): string | void {
    try {
      this.contractOf(kind);
    } catch (e) {
      return (e as Error).message;
    }
  }

  private contractOf(kind: SupportedKind): Address {
    const extra = kind.extra as { contract?: unknown; domain?: { name?: unknown; version?: unknown } } | undefined;
    const reported = typeof extra?.contract === "string" && isAddress(extra.contract) ? getAddress(extra.contract) : undefined;
    if (extra?.domain && (extra.domain.name !== DOMAIN_NAME || extra.domain.version !== DOMAIN_VERSION)) {
      throw new Error(`the facilitator's channel contract domain is ${String(extra.domain.name)} v${String(extra.domain.version)}`);
    }
    const mine = this.options.contract && getAddress(this.options.contract);
    if (mine && reported && mine !== reported) {
      throw new Error(`the facilitator verifies vouchers for contract ${reported}, not ${mine}`);
    }
    const contract = mine ?? reported;
    if (!contract) throw new Error(`the facilitator reports no channel contract for ${SCHEME}`);
    return contract;
  }
}

/** `"$1.5"` / `"1.5"` / `1.5` in base units of a token with `decimals` decimals; refuses more precision than that. */
export function toBaseUnits(money: string | number, decimals: number): string {
  const text = (typeof money === "number" ? money.toFixed(decimals) : money).trim().replace(/^\$/, "");
  const m = /^([0-9]+)(?:\.([0-9]+))?$/.exec(text);
  if (!m) throw new Error(`price ${String(money)} is not an amount`);
  const fraction = (m[2] ?? "").replace(/0+$/, "");
  if (fraction.length > decimals) throw new Error(`price ${String(money)} has more than ${decimals} decimals`);
  const units = BigInt(m[1]! + fraction.padEnd(decimals, "0"));
  if (units === 0n) throw new Error(`price ${String(money)} is zero`);
  return units.toString();
}

/**
 * `createAuthHeaders` for `HTTPFacilitatorClient` with the node's facilitator token (`[facilitator] token`): the
 * same `Authorization: Bearer` header on verify, settle and supported.
 */
export function bearerAuthHeaders(token: string) {
  const h = { Authorization: `Bearer ${token}` };
  return async () => ({ verify: h, settle: h, supported: h });
}
