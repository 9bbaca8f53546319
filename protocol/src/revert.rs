//! The one decoder of `PaymentChannel` reverts, for the node, the watcher, the relay and the
//! client: custom errors read as sentences with their values, instead of raw bytes.

use alloy::{primitives::Bytes, sol_types::SolInterface, transports::TransportError};

use crate::bindings::IPaymentChannel::IPaymentChannelErrors;

/// The contract's custom error in `data`, if it is one of `IPaymentChannel`'s.
pub fn decode(data: &[u8]) -> Option<IPaymentChannelErrors> {
    IPaymentChannelErrors::abi_decode(data).ok()
}

/// A custom error as a sentence: what it means, then the error with its values, e.g. `the
/// sending account is not the channel's payee (NotPayee { caller: 0x…, payee: 0x… })`.
pub fn sentence(error: &IPaymentChannelErrors) -> String {
    let debug = format!("{error:?}");
    // The enum variant wraps a struct of the same name: keep the inner one.
    let inner = match debug.split_once('(') {
        Some((name, rest)) if rest.starts_with(name) => rest.strip_suffix(')').unwrap_or(rest),
        _ => &debug,
    };
    let name = inner.split([' ', '(', '{']).next().unwrap_or(inner);
    let meaning = match name {
        "ZeroAmount" => "the amount is zero",
        "NotPayer" => "the sending account is not the channel's payer",
        "NotPayee" => "the sending account is not the channel's payee",
        "ChannelNotOpen" => "the channel is not open",
        "ChannelExists" => "a channel with these parameters exists already",
        "ChallengePeriodOutOfBounds" => "the challenge period is outside the contract's bounds",
        "DepositTooLarge" => "the deposit is above the contract's maximum",
        "ExitAlreadyRequested" => "an exit is already pending",
        "ExitNotRequested" => "no exit was requested",
        "ChallengePeriodActive" => "the challenge period has not ended",
        "TopUpDuringExit" => "only the payer may top up during an exit",
        "InvalidPayee" => "the payee is invalid",
        "InvalidMsgValue" => "the native value sent does not match the deposit",
        "AuthorizationExpired" => "the authorisation expired",
        "InvalidOpenAuthorization" => "the open authorisation is not valid",
        "NativeTokenNotSupported" => "a gasless open needs an ERC-20 token",
        _ => return inner.to_owned(),
    };
    // A unit error prints as `Name`: nothing to add.
    if inner == name { format!("{meaning} ({name})") } else { format!("{meaning} ({inner})") }
}

/// Revert data explained: the custom error as a [`sentence`], or the raw bytes.
pub fn describe(data: &[u8]) -> String {
    decode(data).map_or_else(|| format!("revert data {}", Bytes::copy_from_slice(data)), |e| sentence(&e))
}

/// The revert a failed contract call carries, explained; `None` if it failed otherwise (the
/// RPC, the transport).
pub fn of_contract_error(e: &alloy::contract::Error) -> Option<String> {
    e.as_revert_data().map(|data| describe(&data))
}

/// The revert a failed RPC call (`eth_call`, `eth_estimateGas`) carries, explained; `None` if
/// it failed otherwise.
pub fn of_transport_error(e: &TransportError) -> Option<String> {
    e.as_error_resp().and_then(|r| r.as_revert_data()).map(|data| describe(&data))
}

#[cfg(test)]
mod tests {
    use alloy::primitives::Address;

    use super::*;
    use crate::bindings::IPaymentChannel;

    #[test]
    fn reverts_read_as_sentences() {
        let not_payee = IPaymentChannelErrors::NotPayee(IPaymentChannel::NotPayee {
            caller: Address::repeat_byte(1),
            payee: Address::repeat_byte(2),
        });
        let data = not_payee.abi_encode();
        assert_eq!(decode(&data), Some(not_payee.clone()));
        let text = describe(&data);
        assert!(text.starts_with("the sending account is not the channel's payee (NotPayee {"), "{text}");
        assert!(text.contains(&Address::repeat_byte(2).to_string()), "{text}");
        assert_eq!(describe(&[0xde, 0xad]), "revert data 0xdead");
        assert_eq!(describe(&[]), "revert data 0x");
    }
}
