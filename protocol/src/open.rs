//! Gasless opens: a payer who holds tokens but no native gas authorises a channel with
//! signatures, and a relayer (the provider's node at [`OPEN_PATH`], or anyone) submits it and
//! pays the gas.
//!
//! Two authorisations are supported, matching `PaymentChannel.openWithPermit` and
//! `PaymentChannel.openWithAuthorization`:
//!
//! - [`GaslessAuthorization::Permit`]: an EIP-2612 `Permit` of the deposit to the channel
//!   contract (under the token's domain) plus the payer's
//!   `OpenAuthorization(bytes32 channelId,uint256 deposit,uint256 deadline)` (under the channel
//!   contract's domain), which binds every channel parameter and the deposit.
//! - [`GaslessAuthorization::Transfer`]: an EIP-3009 `ReceiveWithAuthorization` of the deposit
//!   to the channel contract whose `nonce` *is* the channel id, so it binds every parameter by
//!   itself.
//!
//! Either way a relayer cannot redirect the deposit: the channel id commits to payer, payee,
//! token, signer, challenge period and salt, and each authorisation to the deposit.

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    signers::{Signer, SignerSync},
    sol,
    sol_types::{Eip712Domain, SolStruct},
};
use serde::{Deserialize, Serialize};

use crate::{ChannelDomain, Error, Result, bindings::IPaymentChannel::ChannelParams, wire::u256_dec};

/// The path of the node's relay endpoint (`POST`, JSON [`GaslessOpen`], answer [`OpenResponse`]).
pub const OPEN_PATH: &str = "/x402/open";

sol! {
    /// The payer's consent to a channel opened by someone else, checked by
    /// `PaymentChannel.openWithPermit` under the channel contract's domain.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct OpenAuthorization {
        bytes32 channelId;
        uint256 deposit;
        uint256 deadline;
    }

    /// EIP-2612.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Permit {
        address owner;
        address spender;
        uint256 value;
        uint256 nonce;
        uint256 deadline;
    }

    /// EIP-3009, the variant only the recipient may submit.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct ReceiveWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }

    /// ERC-5267: a contract's EIP-712 domain (OpenZeppelin's `ERC20Permit` has it).
    #[sol(rpc)]
    interface IERC5267 {
        function eip712Domain()
            external
            view
            returns (
                bytes1 fields,
                string name,
                string version,
                uint256 chainId,
                address verifyingContract,
                bytes32 salt,
                uint256[] extensions
            );
    }

    /// The EIP-2612 nonce.
    #[sol(rpc)]
    interface IERC20Permit {
        function nonces(address owner) external view returns (uint256);
    }
}

/// How the payer authorised the deposit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum GaslessAuthorization {
    /// EIP-2612 permit plus the payer's `OpenAuthorization`; both valid until `deadline`.
    Permit {
        /// Unix time until which both signatures are valid.
        deadline: u64,
        /// The payer's 65-byte permit signature.
        permit_signature: Bytes,
        /// The payer's signature over `OpenAuthorization(channelId, deposit, deadline)`.
        open_signature: Bytes,
    },
    /// EIP-3009 `receiveWithAuthorization` with `nonce = channelId`.
    Transfer {
        /// Unix time after which the authorisation is valid.
        valid_after: u64,
        /// Unix time before which it is valid.
        valid_before: u64,
        /// The payer's 65-byte signature.
        signature: Bytes,
    },
}

impl GaslessAuthorization {
    /// `"permit"` or `"transfer"`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Permit { .. } => "permit",
            Self::Transfer { .. } => "transfer",
        }
    }

    /// The last unix second at which the authorisation can be used.
    pub const fn expires(&self) -> u64 {
        match self {
            Self::Permit { deadline, .. } => *deadline,
            Self::Transfer { valid_before, .. } => valid_before.saturating_sub(1),
        }
    }
}

/// A gasless open, ready for a relayer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GaslessOpen {
    /// The channel parameters; `params.payer` signed.
    pub params: ChannelParams,
    /// The deposit in token base units.
    #[serde(with = "u256_dec")]
    pub deposit: U256,
    /// The payer's signatures.
    pub authorization: GaslessAuthorization,
}

/// The relay endpoint's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenResponse {
    /// The new channel.
    pub channel_id: B256,
    /// The transaction that opened it (mined).
    pub transaction_hash: B256,
    /// The deposit the contract credited.
    #[serde(with = "u256_dec")]
    pub deposit: U256,
}

/// A token's EIP-712 domain, as its `eip712Domain()` reports it.
#[derive(Clone, Debug)]
pub struct TokenDomain {
    domain: Eip712Domain,
}

impl TokenDomain {
    /// The domain `{name, version, chainId, verifyingContract: token}`.
    pub fn new(name: String, version: String, chain_id: u64, token: Address) -> Self {
        Self {
            domain: Eip712Domain::new(
                Some(name.into()),
                Some(version.into()),
                Some(U256::from(chain_id)),
                Some(token),
                None,
            ),
        }
    }

    /// The alloy domain.
    pub const fn domain(&self) -> &Eip712Domain {
        &self.domain
    }

    fn token(&self) -> Address {
        self.domain.verifying_contract.unwrap_or_default()
    }
}

impl GaslessOpen {
    /// Signs a permit-based open of the channel `params` with `deposit`: the permit's `nonce`
    /// is the token's current EIP-2612 nonce of the payer, who must be `params.payer`.
    pub fn sign_permit<S: SignerSync + Signer + ?Sized>(
        channel_domain: &ChannelDomain,
        token_domain: &TokenDomain,
        payer: &S,
        params: &ChannelParams,
        deposit: U256,
        permit_nonce: U256,
        deadline: u64,
    ) -> Result<Self> {
        check_payer(payer.address(), token_domain, params)?;
        let permit = Permit {
            owner: params.payer,
            spender: channel_domain.contract(),
            value: deposit,
            nonce: permit_nonce,
            deadline: U256::from(deadline),
        };
        let permit_signature = sign(payer, permit.eip712_signing_hash(token_domain.domain()))?;
        let open = OpenAuthorization {
            channelId: params.channel_id(channel_domain.chain_id(), channel_domain.contract()),
            deposit,
            deadline: U256::from(deadline),
        };
        let open_signature = sign(payer, channel_domain.hash_typed(&open))?;
        Ok(Self {
            params: params.clone(),
            deposit,
            authorization: GaslessAuthorization::Permit { deadline, permit_signature, open_signature },
        })
    }

    /// Signs an EIP-3009 open of the channel `params` with `deposit`, valid in
    /// `(valid_after, valid_before)`; the payer must be `params.payer`.
    pub fn sign_transfer<S: SignerSync + Signer + ?Sized>(
        channel_domain: &ChannelDomain,
        token_domain: &TokenDomain,
        payer: &S,
        params: &ChannelParams,
        deposit: U256,
        valid_after: u64,
        valid_before: u64,
    ) -> Result<Self> {
        check_payer(payer.address(), token_domain, params)?;
        let auth = ReceiveWithAuthorization {
            from: params.payer,
            to: channel_domain.contract(),
            value: deposit,
            validAfter: U256::from(valid_after),
            validBefore: U256::from(valid_before),
            nonce: params.channel_id(channel_domain.chain_id(), channel_domain.contract()),
        };
        let signature = sign(payer, auth.eip712_signing_hash(token_domain.domain()))?;
        Ok(Self {
            params: params.clone(),
            deposit,
            authorization: GaslessAuthorization::Transfer { valid_after, valid_before, signature },
        })
    }

    /// The depositor.
    pub const fn payer(&self) -> Address {
        self.params.payer
    }

    /// The calldata of the contract call that opens the channel
    /// (`openWithPermit` or `openWithAuthorization`).
    pub fn calldata(&self) -> Result<Bytes> {
        use alloy::sol_types::SolCall;

        use crate::bindings::IPaymentChannel::{openWithAuthorizationCall, openWithPermitCall};
        let params = self.params.clone();
        let deposit = self.deposit;
        Ok(match &self.authorization {
            GaslessAuthorization::Permit { deadline, permit_signature, open_signature } => {
                let (v, r, s) = split(permit_signature)?;
                openWithPermitCall {
                    params,
                    deposit,
                    deadline: U256::from(*deadline),
                    v,
                    r,
                    s,
                    openSignature: open_signature.clone(),
                }
                .abi_encode()
            }
            GaslessAuthorization::Transfer { valid_after, valid_before, signature } => {
                let (v, r, s) = split(signature)?;
                openWithAuthorizationCall {
                    params,
                    deposit,
                    validAfter: U256::from(*valid_after),
                    validBefore: U256::from(*valid_before),
                    v,
                    r,
                    s,
                }
                .abi_encode()
            }
        }
        .into())
    }
}

fn check_payer(signer: Address, token_domain: &TokenDomain, params: &ChannelParams) -> Result<()> {
    if signer != params.payer {
        return Err(Error::Gasless(format!(
            "the key of {signer} cannot authorise a deposit of the channel's payer {}",
            params.payer
        )));
    }
    if token_domain.token() != params.token || params.token.is_zero() {
        return Err(Error::Gasless(format!(
            "the token domain is of {} but the channel's token is {}",
            token_domain.token(),
            params.token
        )));
    }
    Ok(())
}

fn sign<S: SignerSync + ?Sized>(signer: &S, hash: B256) -> Result<Bytes> {
    Ok(Bytes::from(signer.sign_hash_sync(&hash)?.as_bytes().to_vec()))
}

/// Splits a 65-byte `r ‖ s ‖ v` signature into the `(v, r, s)` the token functions take.
fn split(signature: &Bytes) -> Result<(u8, B256, B256)> {
    let bytes: &[u8; 65] =
        signature.as_ref().try_into().map_err(|_| Error::SignatureLength(signature.len()))?;
    Ok((bytes[64], B256::from_slice(&bytes[..32]), B256::from_slice(&bytes[32..64])))
}

#[cfg(test)]
mod tests {
    use alloy::{primitives::keccak256, signers::local::PrivateKeySigner};

    use super::*;

    fn params(payer: Address, token: Address) -> ChannelParams {
        ChannelParams {
            payer,
            payee: Address::repeat_byte(1),
            token,
            signer: Address::ZERO,
            challengePeriod: 3600,
            salt: B256::repeat_byte(9),
        }
    }

    #[test]
    fn typehashes_match_the_contracts() {
        assert_eq!(
            OpenAuthorization::default().eip712_type_hash(),
            keccak256("OpenAuthorization(bytes32 channelId,uint256 deposit,uint256 deadline)")
        );
        assert_eq!(
            Permit::default().eip712_type_hash(),
            keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)")
        );
        assert_eq!(
            ReceiveWithAuthorization::default().eip712_type_hash(),
            keccak256(
                "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
            )
        );
    }

    #[test]
    fn signatures_recover_to_the_payer_and_json_round_trips() {
        let key = PrivateKeySigner::random();
        let token = Address::repeat_byte(7);
        let channels = ChannelDomain::new(31337, Address::repeat_byte(5));
        let tokens = TokenDomain::new("Test USD".into(), "1".into(), 31337, token);
        let p = params(key.address(), token);
        let id = p.channel_id(31337, channels.contract());
        let deposit = U256::from(1_000_000);

        let open =
            GaslessOpen::sign_permit(&channels, &tokens, &key, &p, deposit, U256::from(4), 99).unwrap();
        assert_eq!(open.payer(), key.address());
        let GaslessAuthorization::Permit { permit_signature, open_signature, .. } = &open.authorization
        else {
            panic!("a permit")
        };
        let permit = Permit {
            owner: key.address(),
            spender: channels.contract(),
            value: deposit,
            nonce: U256::from(4),
            deadline: U256::from(99),
        };
        let recovered = |sig: &Bytes, hash: B256| {
            alloy::primitives::Signature::try_from(sig.as_ref())
                .unwrap()
                .recover_address_from_prehash(&hash)
                .unwrap()
        };
        assert_eq!(recovered(permit_signature, permit.eip712_signing_hash(tokens.domain())), key.address());
        let auth = OpenAuthorization { channelId: id, deposit, deadline: U256::from(99) };
        assert_eq!(recovered(open_signature, channels.hash_typed(&auth)), key.address());

        let json = serde_json::to_string(&open).unwrap();
        assert!(json.contains(r#""kind":"permit""#), "{json}");
        assert!(json.contains(r#""deposit":"1000000""#), "{json}");
        assert_eq!(serde_json::from_str::<GaslessOpen>(&json).unwrap(), open);

        let transfer = GaslessOpen::sign_transfer(&channels, &tokens, &key, &p, deposit, 0, 100).unwrap();
        let GaslessAuthorization::Transfer { signature, .. } = &transfer.authorization else {
            panic!("a transfer")
        };
        let rwa = ReceiveWithAuthorization {
            from: key.address(),
            to: channels.contract(),
            value: deposit,
            validAfter: U256::ZERO,
            validBefore: U256::from(100),
            nonce: id,
        };
        assert_eq!(recovered(signature, rwa.eip712_signing_hash(tokens.domain())), key.address());
        assert_eq!(transfer.authorization.expires(), 99);
        assert!(transfer.calldata().unwrap().len() > 4);
    }

    #[test]
    fn refuses_a_token_or_payer_mismatch_and_bad_json() {
        let key = PrivateKeySigner::random();
        let channels = ChannelDomain::new(1, Address::repeat_byte(5));
        let tokens = TokenDomain::new("T".into(), "1".into(), 1, Address::repeat_byte(7));
        let other = params(key.address(), Address::repeat_byte(8));
        assert!(matches!(
            GaslessOpen::sign_transfer(&channels, &tokens, &key, &other, U256::from(1), 0, 1),
            Err(Error::Gasless(_))
        ));
        let someone_else = params(Address::repeat_byte(3), Address::repeat_byte(7));
        assert!(matches!(
            GaslessOpen::sign_transfer(&channels, &tokens, &key, &someone_else, U256::from(1), 0, 1),
            Err(Error::Gasless(_))
        ));
        for bad in [r#"{"params":{}}"#, r#"{"params":{},"deposit":"1","authorization":{"kind":"permit"}}"#] {
            assert!(serde_json::from_str::<GaslessOpen>(bad).is_err(), "{bad}");
        }
        let short = GaslessOpen {
            params: other,
            deposit: U256::from(1),
            authorization: GaslessAuthorization::Transfer {
                valid_after: 0,
                valid_before: 1,
                signature: Bytes::from(vec![1, 2, 3]),
            },
        };
        assert!(matches!(short.calldata(), Err(Error::SignatureLength(3))));
    }
}
