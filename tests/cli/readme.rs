//! The README's CLI walkthrough, run as written against a devnet: every `$ x402 …` line of its
//! code block is a command (the node's address and the shortened channel ids replaced by the
//! real ones), each must succeed, and every word of the output the README shows under it must
//! be in what the command printed.

use x402_e2e::{
    cheats,
    harness::{Env, Gateway},
    upstream,
};

use crate::support::Cli;

/// The README's node address.
const NODE: &str = "http://127.0.0.1:8402";

/// One step of the walkthrough: a command and the output shown under it.
#[derive(Debug)]
struct Step {
    args: Vec<String>,
    shown: Vec<String>,
}

fn walkthrough() -> Vec<Step> {
    let readme = include_str!("../../README.md");
    let section = readme.split("### Walkthrough").nth(1).expect("the walkthrough section");
    let block = section.split("```sh\n").nth(1).and_then(|s| s.split("```").next()).expect("its code block");
    let mut steps: Vec<Step> = Vec::new();
    for line in block.lines() {
        if let Some(command) = line.strip_prefix("$ x402 ") {
            // A comment is two or more spaces and `#`.
            let command = command.split("  #").next().unwrap_or(command).trim_end();
            steps.push(Step { args: words(command), shown: Vec::new() });
        } else if !line.trim_start().starts_with('#') && !line.trim().is_empty() {
            steps.last_mut().expect("output follows a command").shown.push(line.to_owned());
        }
    }
    steps
}

/// Splits a command line into arguments as a shell would (single quotes only).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.with_relay(env.gateway_config(upstream().await, data.path()), data.path());
    let gw = Gateway::start(env.with_provider_key(config, data.path())).await;
    let key = env.fresh_key(1_000_000).await;
    let cli = Cli::new(&env).key(&key);

    let steps = walkthrough();
    assert!(steps.len() >= 10, "{steps:?}");
    // The README's shortened ids, in the order their channels are opened, and the real ones.
    let mut ids: Vec<(String, String)> = Vec::new();
    let shortened = ["0x3d36", "0x9a1f"];
    for step in steps {
        let args: Vec<String> = step
            .args
            .iter()
            .map(|a| {
                let mut a = a.replace(NODE, &gw.url);
                for (short, real) in &ids {
                    if a == *short {
                        a = real[..12].to_owned();
                    }
                }
                a
            })
            .collect();
        if args[0] == "withdraw" {
            // After the challenge period.
            let now = cheats::now(&env.node_chain).await.unwrap();
            cheats::increase_time(&env.node_chain, 3600 * 24 + 1).await.unwrap();
            let _ = now;
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = cli.run(&argv).await.success();
        let printed = format!("{}\n{}", run.stdout, run.stderr);
        if args[0] == "open" {
            let line = run.stdout.lines().next().unwrap_or("");
            let id = line.strip_prefix("opened channel ").expect("the channel opened").to_owned();
            ids.push((shortened[ids.len()].to_owned(), id));
        }
        for shown in &step.shown {
            for word in shown.split_whitespace() {
                // `0x3d36…e636`: the full id of that channel.
                let word = match word.split_once('…') {
                    Some((head, _)) => {
                        ids.iter().find(|(s, _)| s == head).map_or(word, |(_, real)| real.as_str())
                    }
                    None => word,
                };
                let word = word.replace(NODE, &gw.url);
                assert!(printed.contains(&word), "{word:?} (from {shown:?}) not printed by:\n{run}");
            }
        }
    }
    assert_eq!(ids.len(), 2, "both channels were opened");
    gw.stop().await;
}
