//! The demo's story, end to end, with the gateway and the watcher in this process.

use alloy::primitives::U256;
use x402_devnet::{
    PRICE,
    demo::{self, DemoOptions},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_story_adds_up_to_the_unit_and_leaves_nothing_behind() {
    let options = DemoOptions::default();
    let mut story = Vec::new();
    let outcome = demo::run(&options, &mut story).await.unwrap();
    let story = String::from_utf8(story).unwrap();

    // The provider got exactly what was charged: one price per paid request.
    let (alice, bob) = (&outcome.alice, &outcome.bob);
    assert_eq!((alice.requests, bob.requests), (300, 50));
    assert_eq!(alice.charged, U256::from(300 * PRICE));
    assert_eq!(bob.charged, U256::from(50 * PRICE));
    assert_eq!(outcome.provider.after - outcome.provider.before, U256::from(350 * PRICE));
    // Each client got its deposit back minus what it spent.
    for c in [alice, bob] {
        assert_eq!(c.refund, c.deposit - c.charged, "{}", c.party.name);
        assert_eq!(c.party.before - c.party.after, c.charged, "{}", c.party.name);
    }
    assert_eq!(outcome.contract_balance, U256::ZERO, "both channels are closed");

    // The on-chain steps, in order, from the receipts.
    let calls: Vec<&str> = outcome.steps.iter().map(|s| s.what.as_str()).collect();
    assert_eq!(
        calls,
        [
            "approve",
            "open",
            "approve",
            "open",
            "settleMany (2 channels)",
            "closeMany (1 channel)",
            "requestExit",
            "settleAuthorized",
            "withdraw"
        ],
        "{story}"
    );
    assert!(outcome.steps.iter().all(|s| s.success && s.gas_used > 21_000));
    // The watcher settled Bob's latest voucher, from its own account.
    let settlement = outcome.watcher_settlement.as_ref().expect("the watcher settled");
    assert_eq!(settlement.from, outcome.watcher);
    assert_eq!(outcome.steps[7], *settlement);
    assert!(outcome.total_gas() / 350 < outcome.transfer_gas, "cheaper than a transfer per request");

    // The story was told.
    for line in [
        "1. Alice opens a channel",
        "7. Bob exits unilaterally",
        "gas per paid request overall",
        "Everything adds up",
    ] {
        assert!(story.contains(line), "{line:?} missing from:\n{story}");
    }

    // Nothing is left: anvil is gone, the work directory removed.
    assert!(!std::path::Path::new(&format!("/proc/{}", outcome.anvil_pid)).exists(), "anvil still runs");
    assert!(!outcome.work_dir.exists(), "{} still exists", outcome.work_dir.display());
}
