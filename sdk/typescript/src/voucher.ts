import {
  encodeAbiParameters,
  getAddress,
  hashTypedData,
  keccak256,
  recoverTypedDataAddress,
  type Address,
  type Hex,
  type LocalAccount,
} from "viem";
import { DOMAIN_NAME, DOMAIN_VERSION } from "./constants.js";

/** The immutable parameters of a channel (`IPaymentChannel.ChannelParams`). */
export interface ChannelParams {
  payer: Address;
  payee: Address;
  /** The ERC-20 token, or the zero address for the native token. */
  token: Address;
  /** The voucher signer; the zero address means the payer signs. */
  signer: Address;
  challengePeriod: number;
  salt: Hex;
}

/** A voucher: the payee may be paid, in total, up to `cumulativeAmount` from `channelId`. */
export interface Voucher {
  channelId: Hex;
  nonce: bigint;
  cumulativeAmount: bigint;
}

export const voucherTypes = {
  Voucher: [
    { name: "channelId", type: "bytes32" },
    { name: "nonce", type: "uint64" },
    { name: "cumulativeAmount", type: "uint256" },
  ],
} as const;

export const openAuthorizationTypes = {
  OpenAuthorization: [
    { name: "channelId", type: "bytes32" },
    { name: "deposit", type: "uint256" },
    { name: "deadline", type: "uint256" },
  ],
} as const;

/** The EIP-712 domain of one `PaymentChannel` deployment. */
export function channelDomain(chainId: number, contract: Address) {
  return { name: DOMAIN_NAME, version: DOMAIN_VERSION, chainId, verifyingContract: getAddress(contract) } as const;
}

/** The channel id, exactly as `PaymentChannel.computeChannelId`: `keccak256(abi.encode(chainid, contract, params))`. */
export function computeChannelId(chainId: number, contract: Address, p: ChannelParams): Hex {
  return keccak256(
    encodeAbiParameters(
      [
        { type: "uint256" },
        { type: "address" },
        { type: "address" },
        { type: "address" },
        { type: "address" },
        { type: "address" },
        { type: "uint32" },
        { type: "bytes32" },
      ],
      [BigInt(chainId), contract, p.payer, p.payee, p.token, p.signer, p.challengePeriod, p.salt],
    ),
  );
}

/** The EIP-712 digest the channel's signer signs (`PaymentChannel.voucherDigest`). */
export function voucherDigest(chainId: number, contract: Address, v: Voucher): Hex {
  return hashTypedData({ domain: channelDomain(chainId, contract), types: voucherTypes, primaryType: "Voucher", message: v });
}

/** Signs a voucher: 65 bytes `r ‖ s ‖ v`, low `s`, `v` 27 or 28 (the form the contract's ECDSA path accepts). */
export async function signVoucher(account: LocalAccount, chainId: number, contract: Address, v: Voucher): Promise<Hex> {
  return account.signTypedData({ domain: channelDomain(chainId, contract), types: voucherTypes, primaryType: "Voucher", message: v });
}

/**
 * Whether `signature` is `signer`'s ECDSA signature of voucher `v` (65 bytes, low `s`, `v` 27/28). Never throws.
 * The client only trusts channel state that carries its own signature (ERC-1271 is not tried: the client's
 * signer is a local key).
 */
export async function isVoucherSignedBy(
  signer: Address,
  chainId: number,
  contract: Address,
  v: Voucher,
  signature: Hex,
): Promise<boolean> {
  if (!/^0x[0-9a-fA-F]{130}$/.test(signature)) return false;
  const s = BigInt("0x" + signature.slice(66, 130));
  const recoveryByte = parseInt(signature.slice(130, 132), 16);
  if (recoveryByte !== 27 && recoveryByte !== 28) return false;
  // secp256k1n / 2: the contract (OpenZeppelin ECDSA) refuses high-s signatures.
  if (s > 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0n) return false;
  try {
    const recovered = await recoverTypedDataAddress({
      domain: channelDomain(chainId, contract),
      types: voucherTypes,
      primaryType: "Voucher",
      message: v,
      signature,
    });
    return getAddress(recovered) === getAddress(signer);
  } catch {
    return false;
  }
}
