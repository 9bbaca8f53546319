//! The gas ledger: every transaction mined in a range of blocks, with its sender, what it
//! called and the gas its receipt reports.

use alloy::{
    consensus::Transaction as _,
    eips::BlockId,
    primitives::{Address, B256},
    providers::{DynProvider, Provider},
    sol_types::SolInterface,
};
use x402_protocol::bindings::IPaymentChannel::IPaymentChannelCalls;

use crate::{Error, Result, chain::ITestStablecoin::ITestStablecoinCalls};

/// One mined transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Its block.
    pub block: u64,
    /// Its hash.
    pub tx: B256,
    /// Its sender.
    pub from: Address,
    /// What it called: `open`, `settleMany (2 channels)`, `approve`, `ETH transfer`, …
    pub what: String,
    /// The gas used, from the receipt.
    pub gas_used: u64,
    /// Whether it succeeded.
    pub success: bool,
}

/// Every transaction mined in blocks `from..=to`, in order, described against the
/// `PaymentChannel` at `contract` and the test stablecoin at `token`.
pub async fn steps(
    chain: &DynProvider,
    from: u64,
    to: u64,
    contract: Address,
    token: Address,
) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for block in from..=to {
        let receipts = chain
            .get_block_receipts(BlockId::number(block))
            .await
            .map_err(|e| Error::chain("eth_getBlockReceipts", e))?
            .unwrap_or_default();
        for receipt in receipts {
            let hash = receipt.transaction_hash;
            let tx = chain
                .get_transaction_by_hash(hash)
                .await
                .map_err(|e| Error::chain("eth_getTransactionByHash", e))?
                .ok_or_else(|| Error::chain("eth_getTransactionByHash", format!("{hash} not found")))?;
            steps.push(Step {
                block,
                tx: hash,
                from: receipt.from,
                what: describe(receipt.to, tx.input(), contract, token),
                gas_used: receipt.gas_used,
                success: receipt.status(),
            });
        }
    }
    Ok(steps)
}

/// What a call to `to` with `input` does.
fn describe(to: Option<Address>, input: &[u8], contract: Address, token: Address) -> String {
    match to {
        None => "deploy".into(),
        Some(_) if input.is_empty() => "ETH transfer".into(),
        Some(to) if to == contract => match IPaymentChannelCalls::abi_decode(input) {
            Ok(IPaymentChannelCalls::settleMany(call)) => batch("settleMany", call.claims.len()),
            Ok(IPaymentChannelCalls::closeMany(call)) => batch("closeMany", call.claims.len()),
            Ok(call) => IPaymentChannelCalls::name_by_selector(call.selector()).unwrap_or("?").into(),
            Err(_) => "PaymentChannel (unknown call)".into(),
        },
        Some(to) if to == token => selector(input)
            .and_then(ITestStablecoinCalls::name_by_selector)
            .unwrap_or("token (unknown call)")
            .into(),
        Some(to) => format!("call to {to}"),
    }
}

fn batch(name: &str, n: usize) -> String {
    format!("{name} ({n} channel{})", if n == 1 { "" } else { "s" })
}

fn selector(input: &[u8]) -> Option<[u8; 4]> {
    input.get(..4)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use alloy::{
        primitives::{U256, address},
        sol_types::SolCall,
    };
    use x402_protocol::bindings::IPaymentChannel;

    use super::*;
    use crate::chain::ITestStablecoin;

    #[test]
    fn calls_are_named_and_batches_counted() {
        let (contract, token) = (
            address!("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
            address!("0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"),
        );
        let claim = IPaymentChannel::Claim::default();
        let settle =
            IPaymentChannel::settleManyCall { claims: vec![claim.clone(), claim.clone()] }.abi_encode();
        let close = IPaymentChannel::closeManyCall { claims: vec![claim] }.abi_encode();
        let exit = IPaymentChannel::requestExitCall { params: Default::default() }.abi_encode();
        let approve = ITestStablecoin::approveCall { spender: contract, amount: U256::MAX }.abi_encode();
        let other = Address::repeat_byte(7);
        for (to, input, what) in [
            (Some(contract), &settle[..], "settleMany (2 channels)"),
            (Some(contract), &close[..], "closeMany (1 channel)"),
            (Some(contract), &exit[..], "requestExit"),
            (Some(contract), &[1, 2][..], "PaymentChannel (unknown call)"),
            (Some(token), &approve[..], "approve"),
            (Some(other), &[][..], "ETH transfer"),
            (None, &[1][..], "deploy"),
        ] {
            assert_eq!(describe(to, input, contract, token), what);
        }
        assert_eq!(describe(Some(other), &[1], contract, token), format!("call to {other}"));
    }
}
