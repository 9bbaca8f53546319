import type {
  PaymentPayloadContext,
  PaymentPayloadResult,
  PaymentRequirements,
  SchemeClientHooks,
  SchemeNetworkClient,
} from "@x402/core/types";
import type { PaymentResponseContext } from "@x402/core/client";
import {
  getAddress,
  isAddress,
  parseSignature,
  toHex,
  zeroAddress,
  type Account,
  type Address,
  type Chain,
  type Hex,
  type LocalAccount,
  type PublicClient,
  type Transport,
  type WalletClient,
} from "viem";
import { erc20Abi, paymentChannelAbi } from "./abi.js";
import {
  CORRECTIVE_ERRORS,
  DEAD_CHANNEL_ERRORS,
  DOMAIN_NAME,
  DOMAIN_VERSION,
  OPEN_PATH,
  SCHEME,
  X402_VERSION,
} from "./constants.js";
import { MemoryChannelStore, type ChannelRecord, type ChannelStore } from "./store.js";
import {
  channelDomain,
  computeChannelId,
  isVoucherSignedBy,
  openAuthorizationTypes,
  signVoucher,
  type ChannelParams,
  type Voucher,
} from "./voucher.js";

/** The EIP-712 domain of the channel contract, as a requirement names it (`extra.domain`). */
export interface ChannelDomain {
  name: string;
  version: string;
}

/** The `extra` of a `channel-voucher` payment requirement (see protocol/src/wire.rs `ChannelExtra`). */
export interface ChannelExtra {
  /** The `PaymentChannel` contract: the vouchers' `verifyingContract`. */
  contract: Address;
  /** The channel contract's EIP-712 domain (name and version). */
  domain: ChannelDomain;
  /** The TOKEN's EIP-712 domain name, as in the `exact` and `upto` schemes; absent if unknown or native. */
  name?: string;
  /** The TOKEN's EIP-712 domain version. */
  version?: string;
  minChallengePeriod: number;
  minDeposit: string;
  pricing: "exact" | "upto";
  channel?: ChannelState;
  maxCreditWindow?: number;
}

/** The node's view of a channel in a corrective 402; `signature` is the client's own latest voucher's. */
export interface ChannelState {
  channelId: Hex;
  nonce: number | string;
  cumulativeAmount: string;
  charged: string;
  deposit: string;
  signature?: Hex;
}

/** The voucher sent in the payment payload. */
export interface VoucherPayload {
  [key: string]: unknown;
  channelId: Hex;
  nonce: number;
  cumulativeAmount: string;
  signature: Hex;
}

/** `PAYMENT-RESPONSE` extra of a paid request (wire.rs `SettlementExtra`). */
export interface SettlementExtra {
  channelId: Hex;
  nonce: number;
  cumulativeAmount: string;
  charged: string;
  totalCharged: string;
  session?: { token: Hex; uses: number };
}

/** How deposits are sized: `max(minDeposit, multiple * price)`, never above `cap`. */
export interface DepositPolicy {
  /** Requests one deposit should pay for. Default 100. */
  multiple?: bigint;
  /** The most the client locks in one channel (opening plus top-ups), in token base units. Required. */
  cap: bigint;
}

/** How a channel is opened. */
export type Opener =
  | {
      kind: "onchain";
      /** Pays gas and deposit; its account must be the scheme's payer. */
      wallet: WalletClient<Transport, Chain | undefined, Account>;
    }
  | {
      kind: "relay";
      /** The node's base URL; the client POSTs the gasless open to `${url}/x402/open`. */
      url: string;
      /** Seconds the authorisations stay valid. Default 600. */
      validFor?: number;
      fetch?: typeof fetch;
    };

export interface ChannelSchemeOptions {
  /** The payer, and the voucher signer: a local key (vouchers are signed per request). */
  account: LocalAccount;
  /** Reads the chain (allowance, deposits, token domain). */
  publicClient: PublicClient;
  opener: Opener;
  deposit: DepositPolicy;
  store?: ChannelStore;
  /** Requests the client is willing to prepay per voucher when the route offers a credit window. Default 1. */
  creditWindow?: number;
  /**
   * The `PaymentChannel` deployments the client deposits into. Recommended: without it the client trusts the
   * contract a 402 names, so a hostile server could have it approve and deposit (up to `deposit.cap`) into a
   * contract of its own.
   */
  contracts?: Address[];
  /** Challenge period for new channels; default: the route's `minChallengePeriod`. */
  challengePeriod?: number;
  /** How long a voucher holds its channel's queue if no response arrives (ms). Default: `maxTimeoutSeconds` + 5 s. */
  inFlightTimeoutMs?: number;
}

interface Session {
  channelId: Hex;
  token: Hex;
  uses: number;
}

/** The error thrown when the node's view of a channel cannot be trusted or a payment cannot be made. */
export class ChannelPaymentError extends Error {
  override name = "ChannelPaymentError";
}

/** The wire carries the nonce as a JSON number (a u64 in the node): stay where JSON numbers are exact. */
const MAX_NONCE = BigInt(Number.MAX_SAFE_INTEGER);

function decimal(v: unknown, what: string): bigint {
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (typeof v !== "string" || !/^(0|[1-9][0-9]{0,77})$/.test(v)) {
    throw new ChannelPaymentError(`invalid ${what}: ${JSON.stringify(v)}`);
  }
  return BigInt(v);
}

function chainIdOf(network: string): number {
  const m = /^eip155:([1-9][0-9]{0,15})$/.exec(network);
  if (!m) throw new ChannelPaymentError(`unsupported network ${network}`);
  return Number(m[1]);
}

/** Parses and checks the `extra` of a `channel-voucher` requirement. */
export function parseExtra(req: PaymentRequirements): ChannelExtra {
  const e = req.extra as Partial<ChannelExtra> | undefined;
  if (!e || typeof e !== "object") throw new ChannelPaymentError("requirement without extra");
  if (typeof e.contract !== "string" || !isAddress(e.contract)) throw new ChannelPaymentError("extra.contract is not an address");
  const d = e.domain as Partial<ChannelDomain> | undefined;
  if (!d || typeof d !== "object" || d.name !== DOMAIN_NAME || d.version !== DOMAIN_VERSION) {
    throw new ChannelPaymentError(`unsupported channel contract domain ${String(d?.name)} v${String(d?.version)}`);
  }
  decimal(e.minDeposit, "extra.minDeposit");
  if (typeof e.minChallengePeriod !== "number") throw new ChannelPaymentError("extra.minChallengePeriod missing");
  return e as ChannelExtra;
}

/** The channel key of a requirement: one channel per network, contract, provider and token. */
export function channelKey(req: PaymentRequirements): string {
  const e = parseExtra(req);
  return [req.network, e.contract, req.payTo, req.asset].join("|").toLowerCase();
}

/** A FIFO mutex per channel: one voucher in flight per channel, so vouchers reach the node in nonce order. */
class ChannelQueue {
  private tail: Promise<void> = Promise.resolve();
  private holder: { nonce: bigint | undefined; release: () => void; done: Promise<void> } | undefined;

  private reservation: { done: Promise<void>; clear: () => void } | undefined;

  /** Resolves when the voucher now in flight (or reserved, about to be signed) has its response. */
  inFlight(): Promise<void> | undefined {
    return this.holder?.done ?? this.reservation?.done;
  }

  /**
   * Announces that the caller is about to sign a voucher, so that concurrent callers wait for its grant instead of
   * signing their own. Cleared when a voucher's response frees the queue, by `clearReservation`, or after `timeoutMs`.
   */
  reserve(timeoutMs: number) {
    let clear!: () => void;
    const done = new Promise<void>((r) => (clear = r));
    const timer = setTimeout(() => this.clearReservation(), timeoutMs);
    timer.unref?.();
    this.reservation = {
      done,
      clear: () => {
        clearTimeout(timer);
        clear();
      },
    };
  }

  clearReservation() {
    const r = this.reservation;
    this.reservation = undefined;
    r?.clear();
  }

  async acquire(timeoutMs: number): Promise<(nonce: bigint | undefined) => void> {
    let release!: () => void;
    const done = new Promise<void>((r) => (release = r));
    const prev = this.tail;
    this.tail = prev.then(() => done);
    await prev;
    let released = false;
    const timer = setTimeout(() => free(), timeoutMs);
    timer.unref?.();
    const free = () => {
      if (released) return;
      released = true;
      clearTimeout(timer);
      if (this.holder?.release === free) this.holder = undefined;
      this.clearReservation();
      release();
    };
    this.holder = { nonce: undefined, release: free, done };
    return (nonce) => {
      if (this.holder?.release === free) this.holder.nonce = nonce;
      if (nonce === undefined) free();
    };
  }

  /** Releases the holder if it is waiting for the response to `nonce`. */
  releaseFor(nonce: bigint) {
    if (this.holder && this.holder.nonce === nonce) this.holder.release();
  }
}

/**
 * The `channel-voucher` scheme for the official x402 client (`x402Client.register(network, scheme)`): pays 402s with
 * EIP-712 vouchers on a unidirectional payment channel that it opens and tops up itself.
 */
export class ChannelScheme implements SchemeNetworkClient {
  readonly scheme = SCHEME;
  readonly schemeHooks: SchemeClientHooks;
  readonly store: ChannelStore;
  private readonly sessions = new Map<string, Session>();
  private readonly queues = new Map<string, ChannelQueue>();

  constructor(readonly options: ChannelSchemeOptions) {
    this.store = options.store ?? new MemoryChannelStore();
    this.schemeHooks = { onPaymentResponse: (ctx) => this.onPaymentResponse(ctx) };
  }

  /** The payer's address. */
  get payer(): Address {
    return this.options.account.address;
  }

  private queue(key: string): ChannelQueue {
    let q = this.queues.get(key);
    if (!q) this.queues.set(key, (q = new ChannelQueue()));
    return q;
  }

  /** SchemeNetworkClient: signs the next voucher for `req`, opening or topping up the channel first if needed. */
  async createPaymentPayload(
    x402Version: number,
    req: PaymentRequirements,
    context?: PaymentPayloadContext,
  ): Promise<PaymentPayloadResult> {
    if (x402Version !== X402_VERSION) throw new ChannelPaymentError(`x402 version ${x402Version} is not supported`);
    if (req.scheme !== SCHEME) throw new ChannelPaymentError(`scheme ${req.scheme} is not ${SCHEME}`);
    const extra = parseExtra(req);
    const chainId = chainIdOf(req.network);
    if (this.options.contracts && !this.options.contracts.some((c) => c.toLowerCase() === extra.contract.toLowerCase())) {
      throw new ChannelPaymentError(`channel contract ${extra.contract} is not one this client trusts`);
    }
    const price = decimal(req.amount, "amount");
    if (price === 0n) throw new ChannelPaymentError("a price of zero needs no payment");
    const cap = context?.maxAmountPerPayment === undefined ? undefined : decimal(context.maxAmountPerPayment, "spend cap");
    if (cap !== undefined && price > cap) {
      throw new ChannelPaymentError(`price ${price} is above the spend cap ${cap}`);
    }
    const key = channelKey(req);
    const timeout = this.options.inFlightTimeoutMs ?? (req.maxTimeoutSeconds + 5) * 1000;
    const hold = await this.queue(key).acquire(timeout);
    try {
      let record = await this.ensureChannel(key, req, extra, chainId, price);
      // The credit window: prepay up to `window` requests, within the deposit and the spend cap.
      let window = BigInt(Math.max(1, Math.min(this.options.creditWindow ?? 1, extra.maxCreditWindow ?? 1)));
      if (cap !== undefined) window = window < cap / price ? window : cap / price;
      const base = BigInt(record.cumulative);
      const deposit = BigInt(record.deposit);
      let amount = base + price * window;
      if (amount > deposit) amount = deposit;
      if (amount < base + price) throw new ChannelPaymentError("channel deposit exhausted");
      const nonce = BigInt(record.nonce) + 1n;
      if (nonce > MAX_NONCE) throw new ChannelPaymentError("channel nonce exhausted");
      const voucher: Voucher = { channelId: record.channelId, nonce, cumulativeAmount: amount };
      const signature = await signVoucher(this.options.account, chainId, extra.contract, voucher);
      const maxSigned = BigInt(record.maxSigned) > amount ? BigInt(record.maxSigned) : amount;
      record = { ...record, nonce: nonce.toString(), cumulative: amount.toString(), maxSigned: maxSigned.toString(), signature };
      // Durable before the voucher leaves; the previous voucher's session dies with it.
      await this.store.put(record);
      this.sessions.delete(key);
      hold(nonce);
      const payload: VoucherPayload = { channelId: record.channelId, nonce: Number(nonce), cumulativeAmount: amount.toString(), signature };
      return { x402Version: X402_VERSION, payload };
    } catch (e) {
      hold(undefined);
      throw e;
    }
  }

  /**
   * Frees the channel's queue after the request carrying `payload` failed without an HTTP response (the voucher
   * may or may not have arrived; the next one goes above it either way).
   */
  abandon(req: PaymentRequirements, payload: unknown) {
    const nonce = (payload as Partial<VoucherPayload> | undefined)?.nonce;
    if (req.scheme !== SCHEME || typeof nonce !== "number") return;
    this.queue(channelKey(req)).releaseFor(BigInt(nonce));
  }

  /**
   * The node answered `payload` as the resend of a voucher it already served (`x402-replayed`): this client signed
   * the very voucher again, having lost or restored its state. Its receipt was taken by the response hook; here the
   * next nonce is skipped, so that the next voucher differs from whatever the node served at that nonce: the node
   * then either takes it or answers with its signed state. Returns whether the payload was this scheme's.
   */
  async replayed(req: PaymentRequirements, payload: unknown): Promise<boolean> {
    const v = payload as Partial<VoucherPayload> | undefined;
    if (req.scheme !== SCHEME || typeof v?.nonce !== "number" || typeof v.channelId !== "string") return false;
    const key = channelKey(req);
    const record = await this.store.get(key);
    if (!record || record.channelId.toLowerCase() !== v.channelId.toLowerCase()) return false;
    const skip = BigInt(v.nonce) + 1n;
    if (skip > BigInt(record.nonce) && skip <= MAX_NONCE) await this.store.put({ ...record, nonce: skip.toString() });
    this.queue(key).releaseFor(BigInt(v.nonce));
    return true;
  }

  /**
   * A `PAYMENT-SESSION` header value for `req`, waiting first for the voucher in flight on its channel when the
   * route has credit windows (that voucher's grant is likely to pay this request too), and for the window's uses in
   * flight (a new voucher would revoke the window under them, and prepay another one). Undefined when a new voucher
   * is needed: the caller then signs, and concurrent callers wait for its grant.
   *
   * With `track`, the caller reports the end of the request with `done()`, so that the next voucher waits for the
   * uses in flight; without it (transports that do not show the caller the response), only vouchers are waited for.
   */
  async nextSession(req: PaymentRequirements, track = false): Promise<{ header: string; done: () => void } | undefined> {
    for (;;) {
      const header = this.takeSession(req);
      if (header) {
        if (!track) return { header, done: () => undefined };
        const flight = this.sessionFlight(channelKey(req));
        flight.count++;
        let ended = false;
        return {
          header,
          done: () => {
            if (ended) return;
            ended = true;
            if (--flight.count === 0) flight.idle();
          },
        };
      }
      if (!this.usesWindows(req)) return undefined;
      const key = channelKey(req);
      const flight = this.flights.get(key);
      if (flight && flight.count > 0) {
        await flight.wait;
        continue;
      }
      const queue = this.queue(key);
      const pending = queue.inFlight();
      if (!pending) {
        queue.reserve((req.maxTimeoutSeconds + 5) * 1000);
        return undefined;
      }
      await pending;
    }
  }

  private readonly flights = new Map<string, { count: number; wait: Promise<void>; idle: () => void }>();

  private sessionFlight(key: string) {
    let f = this.flights.get(key);
    if (!f || f.count === 0) {
      let idle!: () => void;
      const wait = new Promise<void>((r) => (idle = r));
      f = { count: 0, wait, idle };
      this.flights.set(key, f);
    }
    return f;
  }

  /** Withdraws the announcement `nextSession` made when the caller will not sign after all. */
  cancelReservation(req: PaymentRequirements) {
    if (req.scheme !== SCHEME) return;
    try {
      this.queues.get(channelKey(req))?.clearReservation();
    } catch {
      // not a channel requirement
    }
  }

  private usesWindows(req: PaymentRequirements): boolean {
    if (req.scheme !== SCHEME) return false;
    try {
      return Math.min(this.options.creditWindow ?? 1, parseExtra(req).maxCreditWindow ?? 1) > 1;
    } catch {
      return false;
    }
  }

  /** A `PAYMENT-SESSION` header value for `req` if a prepaid window has uses left (taking one), else undefined. */
  takeSession(req: PaymentRequirements): string | undefined {
    if (req.scheme !== SCHEME) return undefined;
    let key: string;
    try {
      key = channelKey(req);
    } catch {
      return undefined;
    }
    const s = this.sessions.get(key);
    if (!s || s.uses <= 0) return undefined;
    s.uses -= 1;
    if (s.uses === 0) this.sessions.delete(key);
    return `${s.channelId}:${s.token}`;
  }

  /** Finds the open channel for `key` with room for `price`, or opens / tops up one (serialised per key). */
  private async ensureChannel(
    key: string,
    req: PaymentRequirements,
    extra: ChannelExtra,
    chainId: number,
    price: bigint,
  ): Promise<ChannelRecord> {
    const existing = await this.store.get(key);
    if (existing && existing.status === "open") {
      if (BigInt(existing.cumulative) + price <= BigInt(existing.deposit)) return existing;
      return this.topUp(existing, extra, price);
    }
    return this.open(key, req, extra, chainId, price);
  }

  private depositFor(extra: ChannelExtra, price: bigint, already: bigint): bigint {
    const { multiple = 100n, cap } = this.options.deposit;
    let want = price * multiple;
    const min = decimal(extra.minDeposit, "minDeposit");
    if (want < min) want = min;
    if (already + want > cap) want = cap - already;
    if (want < price || already + want < min) {
      throw new ChannelPaymentError(`deposit cap ${cap} does not cover the price ${price} and the minimum deposit ${min}`);
    }
    return want;
  }

  private async open(
    key: string,
    req: PaymentRequirements,
    extra: ChannelExtra,
    chainId: number,
    price: bigint,
  ): Promise<ChannelRecord> {
    const deposit = this.depositFor(extra, price, 0n);
    const challengePeriod = Math.max(this.options.challengePeriod ?? 0, extra.minChallengePeriod);
    const salt = toHex(crypto.getRandomValues(new Uint8Array(32)));
    const params: ChannelParams = {
      payer: this.payer,
      payee: getAddress(req.payTo),
      token: getAddress(req.asset),
      signer: zeroAddress,
      challengePeriod,
      salt,
    };
    const contract = getAddress(extra.contract);
    const channelId = computeChannelId(chainId, contract, params);
    let credited = deposit;
    if (this.options.opener.kind === "onchain") {
      const wallet = this.options.opener.wallet;
      if (params.token !== zeroAddress) await this.approve(wallet, params.token, contract, deposit);
      const hash = await wallet.writeContract({
        address: contract,
        abi: paymentChannelAbi,
        functionName: "open",
        args: [params, deposit],
        value: params.token === zeroAddress ? deposit : 0n,
        chain: wallet.chain,
      });
      const receipt = await this.options.publicClient.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new ChannelPaymentError(`open reverted (${hash})`);
      credited = (await this.readChannel(contract, channelId)).deposit;
    } else {
      credited = await this.openThroughRelay(this.options.opener, chainId, contract, params, channelId, deposit);
    }
    const record: ChannelRecord = {
      key,
      channelId,
      chainId,
      contract,
      params,
      deposit: credited.toString(),
      nonce: "0",
      cumulative: "0",
      maxSigned: "0",
      spent: "0",
      status: "open",
    };
    await this.store.put(record);
    return record;
  }

  private async approve(wallet: WalletClient<Transport, Chain | undefined, Account>, token: Address, spender: Address, amount: bigint) {
    const allowance = await this.options.publicClient.readContract({
      address: token,
      abi: erc20Abi,
      functionName: "allowance",
      args: [this.payer, spender],
    });
    if (allowance >= amount) return;
    const hash = await wallet.writeContract({ address: token, abi: erc20Abi, functionName: "approve", args: [spender, amount], chain: wallet.chain });
    const receipt = await this.options.publicClient.waitForTransactionReceipt({ hash });
    if (receipt.status !== "success") throw new ChannelPaymentError(`approve reverted (${hash})`);
  }

  private async readChannel(contract: Address, channelId: Hex) {
    const c = await this.options.publicClient.readContract({
      address: contract,
      abi: paymentChannelAbi,
      functionName: "getChannel",
      args: [channelId],
    });
    return { deposit: c.deposit, paid: c.paid, exitAt: c.exitAt, status: c.status };
  }

  private async topUp(record: ChannelRecord, extra: ChannelExtra, price: bigint): Promise<ChannelRecord> {
    if (this.options.opener.kind !== "onchain") {
      // A relayed channel cannot be topped up without gas: retire it and open a new one.
      await this.retire(record);
      throw new ChannelPaymentError("channel exhausted; a gasless client opens a new channel on the next payment");
    }
    const wallet = this.options.opener.wallet;
    const amount = this.depositFor(extra, price, BigInt(record.deposit));
    if (record.params.token !== zeroAddress) await this.approve(wallet, record.params.token, record.contract, amount);
    const hash = await wallet.writeContract({
      address: record.contract,
      abi: paymentChannelAbi,
      functionName: "topUp",
      args: [record.params, amount],
      value: record.params.token === zeroAddress ? amount : 0n,
      chain: wallet.chain,
    });
    const receipt = await this.options.publicClient.waitForTransactionReceipt({ hash });
    if (receipt.status !== "success") throw new ChannelPaymentError(`topUp reverted (${hash})`);
    const onchain = await this.readChannel(record.contract, record.channelId);
    const updated = { ...record, deposit: onchain.deposit.toString() };
    await this.store.put(updated);
    return updated;
  }

  /**
   * Gasless open through the node's relay: an EIP-2612 permit of the deposit to the contract plus the payer's
   * `OpenAuthorization(channelId, deposit, deadline)`, POSTed as JSON to `${url}/x402/open`.
   */
  private async openThroughRelay(
    opener: Extract<Opener, { kind: "relay" }>,
    chainId: number,
    contract: Address,
    params: ChannelParams,
    channelId: Hex,
    deposit: bigint,
  ): Promise<bigint> {
    const body = await this.gaslessOpen(chainId, contract, params, channelId, deposit, opener.validFor ?? 600);
    const res = await (opener.fetch ?? fetch)(new URL(OPEN_PATH, opener.url), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new ChannelPaymentError(`relay refused the open: ${res.status} ${text}`);
    const answer = JSON.parse(text) as { channelId: Hex; deposit: string };
    if (answer.channelId.toLowerCase() !== channelId.toLowerCase()) {
      throw new ChannelPaymentError(`relay opened ${answer.channelId}, not ${channelId}`);
    }
    // Trust the chain, not the relay, for what was credited.
    const onchain = await this.readChannel(contract, channelId);
    if (onchain.status !== 1) throw new ChannelPaymentError(`relay answered but channel ${channelId} is not open`);
    return onchain.deposit;
  }

  /** The JSON body of a gasless open (`GaslessOpen` of protocol/src/open.rs: `{ params, deposit, authorization }`). */
  async gaslessOpen(chainId: number, contract: Address, params: ChannelParams, channelId: Hex, deposit: bigint, validFor: number) {
    const account = this.options.account;
    const deadline = BigInt(Math.floor(Date.now() / 1000) + validFor);
    const [, name, version] = await this.options.publicClient.readContract({
      address: params.token,
      abi: erc20Abi,
      functionName: "eip712Domain",
    });
    const permitNonce = await this.options.publicClient.readContract({
      address: params.token,
      abi: erc20Abi,
      functionName: "nonces",
      args: [params.payer],
    });
    const permitSignature = await account.signTypedData({
      domain: { name, version, chainId, verifyingContract: params.token },
      types: {
        Permit: [
          { name: "owner", type: "address" },
          { name: "spender", type: "address" },
          { name: "value", type: "uint256" },
          { name: "nonce", type: "uint256" },
          { name: "deadline", type: "uint256" },
        ],
      },
      primaryType: "Permit",
      message: { owner: params.payer, spender: contract, value: deposit, nonce: permitNonce, deadline },
    });
    const openSignature = await account.signTypedData({
      domain: channelDomain(chainId, contract),
      types: openAuthorizationTypes,
      primaryType: "OpenAuthorization",
      message: { channelId, deposit, deadline },
    });
    return {
      params: {
        payer: params.payer,
        payee: params.payee,
        token: params.token,
        signer: params.signer,
        challengePeriod: params.challengePeriod,
        salt: params.salt,
      },
      deposit: deposit.toString(),
      authorization: { kind: "permit", deadline: Number(deadline), permitSignature, openSignature },
    };
  }

  /** Splits a 65-byte signature for the contract's `(v, r, s)` arguments. */
  static vrs(signature: Hex) {
    const { r, s, v, yParity } = parseSignature(signature);
    return { v: Number(v ?? BigInt(27 + yParity)), r, s };
  }

  /** The scheme's `onPaymentResponse` hook: takes receipts and corrective 402s, and frees the channel's queue. */
  private async onPaymentResponse(ctx: PaymentResponseContext): Promise<void | { recovered: true }> {
    const req = ctx.requirements;
    if (req.scheme !== SCHEME) return;
    const payload = ctx.paymentPayload.payload as Partial<VoucherPayload>;
    let key: string;
    try {
      key = channelKey(req);
    } catch {
      return;
    }
    const sentNonce = payload.nonce === undefined ? undefined : BigInt(payload.nonce);
    try {
      if (ctx.settleResponse) {
        if (ctx.settleResponse.success) await this.receipt(key, ctx.settleResponse.extra as unknown as SettlementExtra);
        return;
      }
      const pr = ctx.paymentRequired;
      if (!pr || !pr.error) return;
      if (DEAD_CHANNEL_ERRORS.has(pr.error)) {
        const record = await this.store.get(key);
        if (record && record.channelId === payload.channelId) await this.retire(record);
        this.sessions.delete(key);
        return { recovered: true };
      }
      if (!CORRECTIVE_ERRORS.has(pr.error)) return;
      const offer = pr.accepts.find((a) => a.scheme === SCHEME && channelKey(a) === key);
      const state = (offer?.extra as ChannelExtra | undefined)?.channel;
      if (!state) return;
      await this.resync(key, state);
      return { recovered: true };
    } finally {
      if (sentNonce !== undefined) this.queue(key).releaseFor(sentNonce);
    }
  }

  /** Takes a paid response's receipt: what the node charged, and a credit window's session. */
  private async receipt(key: string, paid: SettlementExtra) {
    const record = await this.store.get(key);
    if (!record || record.channelId.toLowerCase() !== paid.channelId?.toLowerCase()) return;
    const total = decimal(paid.totalCharged, "totalCharged");
    const nonce = decimal(paid.nonce, "nonce");
    if (nonce > BigInt(record.nonce) || total > BigInt(record.maxSigned)) {
      throw new ChannelPaymentError(`node reports nonce ${nonce} / charged ${total} above what this client signed`);
    }
    if (total > BigInt(record.spent)) await this.store.put({ ...record, spent: total.toString() });
    if (paid.session && nonce === BigInt(record.nonce) && /^0x[0-9a-fA-F]{64}$/.test(paid.session.token)) {
      const current = this.sessions.get(key);
      if (current && current.token === paid.session.token) current.uses = Math.min(current.uses, paid.session.uses);
      else this.sessions.set(key, { channelId: record.channelId, token: paid.session.token, uses: paid.session.uses });
    }
  }

  /**
   * Takes the node's view of the channel from a corrective 402, but only if it is verifiable: it must carry this
   * client's own signature (its voucher signer's, under the channel contract's EIP-712 domain) over
   * `(channelId, nonce, cumulativeAmount)`, else it is refused whatever it claims. The node may hold an older
   * voucher than the client's latest (a voucher in flight, or lost); it can never hold one the client did not sign.
   * A state without any voucher (nonce 0) needs no signature and may claim nothing.
   */
  async resync(key: string, state: ChannelState) {
    const record = await this.store.get(key);
    if (!record) throw new ChannelPaymentError("corrective 402 for a channel this client does not know");
    if (typeof state.channelId !== "string" || state.channelId.toLowerCase() !== record.channelId.toLowerCase()) {
      throw new ChannelPaymentError(`channel state for ${String(state.channelId)} sent for channel ${record.channelId}`);
    }
    const nonce = decimal(state.nonce, "channel.nonce");
    const cumulative = decimal(state.cumulativeAmount, "channel.cumulativeAmount");
    const charged = decimal(state.charged, "channel.charged");
    if (charged > cumulative) throw new ChannelPaymentError("node reports charged above its voucher");
    const deposit = decimal(state.deposit, "channel.deposit");
    if (nonce === 0n) {
      if (cumulative !== 0n) throw new ChannelPaymentError("node reports an amount without a voucher");
    } else {
      const signed =
        typeof state.signature === "string" &&
        (await isVoucherSignedBy(
          this.voucherSigner(record),
          record.chainId,
          record.contract,
          { channelId: record.channelId, nonce, cumulativeAmount: cumulative },
          state.signature,
        ));
      if (!signed) {
        throw new ChannelPaymentError(
          `node claims voucher ${nonce} for ${cumulative} on ${record.channelId} without this client's signature over it`,
        );
      }
    }
    let maxSigned = BigInt(record.maxSigned);
    let myNonce = BigInt(record.nonce);
    if (nonce > myNonce || cumulative > maxSigned) {
      // The client forgot vouchers (lost or restored state): the node shows one it signed, so it builds on that.
      if (nonce > myNonce) myNonce = nonce;
      if (cumulative > maxSigned) maxSigned = cumulative;
    }
    const next: ChannelRecord = {
      ...record,
      nonce: myNonce.toString(),
      maxSigned: maxSigned.toString(),
      spent: (charged > BigInt(record.spent) ? charged : BigInt(record.spent)).toString(),
      // The node holds the client's latest voucher: the next one only needs to cover what it charged.
      // Otherwise vouchers are in flight and the next goes above all of them.
      cumulative: (nonce === myNonce ? charged : BigInt(record.cumulative) > charged ? BigInt(record.cumulative) : charged).toString(),
      deposit: (deposit > BigInt(record.deposit) ? deposit : BigInt(record.deposit)).toString(),
    };
    if (nonce === myNonce && state.signature) next.signature = state.signature;
    await this.store.put(next);
    this.sessions.delete(key);
  }

  /**
   * Moves a channel the client no longer pays with out of its key (to `key#channelId`, status closed), keeping its
   * parameters and latest voucher for an exit or a close.
   */
  private async retire(record: ChannelRecord) {
    await this.store.put({ ...record, key: `${record.key}#${record.channelId}`, status: "closed" });
    await this.store.delete(record.key);
    this.sessions.delete(record.key);
  }

  private voucherSigner(record: ChannelRecord): Address {
    return record.params.signer === zeroAddress ? record.params.payer : record.params.signer;
  }
}
