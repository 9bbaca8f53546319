import { parseAbi } from "viem";

/** The parts of `IPaymentChannel` (v2) the client calls. */
export const paymentChannelAbi = parseAbi([
  "struct ChannelParams { address payer; address payee; address token; address signer; uint32 challengePeriod; bytes32 salt; }",
  "struct Channel { uint104 deposit; uint104 paid; uint40 exitAt; uint8 status; }",
  "struct Claim { ChannelParams channel; uint64 nonce; uint256 cumulativeAmount; uint256 claimed; bytes signature; }",
  "function open(ChannelParams params, uint256 deposit) payable returns (bytes32 channelId)",
  "function openWithPermit(ChannelParams params, uint256 deposit, uint256 deadline, uint8 v, bytes32 r, bytes32 s, bytes openSignature) returns (bytes32 channelId)",
  "function topUp(ChannelParams params, uint256 amount) payable",
  "function settle(Claim claim)",
  "function getChannel(bytes32 channelId) view returns (Channel)",
  "function computeChannelId(ChannelParams params) view returns (bytes32)",
  "function voucherDigest(bytes32 channelId, uint64 nonce, uint256 cumulativeAmount) view returns (bytes32)",
  "function openAuthorizationDigest(bytes32 channelId, uint256 deposit, uint256 deadline) view returns (bytes32)",
  "function minChallengePeriod() view returns (uint32)",
]);

/** The ERC-20 (and EIP-2612) calls the client makes. */
export const erc20Abi = parseAbi([
  "function approve(address spender, uint256 amount) returns (bool)",
  "function allowance(address owner, address spender) view returns (uint256)",
  "function balanceOf(address owner) view returns (uint256)",
  "function nonces(address owner) view returns (uint256)",
  "function eip712Domain() view returns (bytes1 fields, string name, string version, uint256 chainId, address verifyingContract, bytes32 salt, uint256[] extensions)",
]);
