//! The payer key and the optional session key: from the environment, a file, or an
//! encrypted keystore.
//!
//! Key material is never printed, logged or put in an error message: a parse error says which
//! source was wrong and what a key looks like, never what was read (alloy's hex errors quote
//! the offending character, so they are not passed on). What was read is zeroed on drop.

use std::path::Path;

use alloy::signers::local::PrivateKeySigner;
use zeroize::Zeroizing;

use crate::{args::KeyArgs, error::CliError};

/// The payer's hex private key.
pub(crate) const PRIVATE_KEY_ENV: &str = "X402_PRIVATE_KEY";
/// The keystore's password.
pub(crate) const PASSWORD_ENV: &str = "X402_KEYSTORE_PASSWORD";
/// A hex session key.
pub(crate) const SESSION_KEY_ENV: &str = "X402_SESSION_KEY";
/// Foundry's keystore path, used when `--keystore` / `X402_KEYSTORE` is not given.
pub(crate) const ETH_KEYSTORE_ENV: &str = "ETH_KEYSTORE";
/// Foundry's keystore password file, used when `--password-file` is not given.
pub(crate) const ETH_PASSWORD_ENV: &str = "ETH_PASSWORD";

/// Asks for a keystore's password on the terminal; a seam for the unit tests.
pub(crate) trait Prompt {
    /// The password typed (not echoed), or `None` when there is no terminal.
    fn password(&self, keystore: &Path) -> Option<Zeroizing<String>>;
}

/// The process's terminal (stderr), when there is one.
#[derive(Debug)]
pub(crate) struct Terminal;

impl Prompt for Terminal {
    fn password(&self, keystore: &Path) -> Option<Zeroizing<String>> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
            return None;
        }
        let term = console::Term::stderr();
        let _ = term.write_str(&format!("password of the keystore {}: ", keystore.display()));
        term.read_secure_line().ok().map(Zeroizing::new)
    }
}

/// Reads the environment; a seam for the unit tests.
pub(crate) trait Environment {
    /// The variable's value, if set and not empty.
    fn var(&self, name: &str) -> Option<Zeroizing<String>>;
}

/// The process environment.
#[derive(Debug)]
pub(crate) struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<Zeroizing<String>> {
        std::env::var(name).ok().filter(|v| !v.is_empty()).map(Zeroizing::new)
    }
}

/// The payer's key, from exactly one of `--keystore`, `--key-file` and `X402_PRIVATE_KEY`.
/// More than one is refused: with money at stake, guessing which account was meant is worse
/// than asking.
pub(crate) fn payer(
    args: &KeyArgs,
    env: &dyn Environment,
    prompt: &dyn Prompt,
) -> Result<PrivateKeySigner, CliError> {
    let from_env = env.var(PRIVATE_KEY_ENV);
    let account = args.account.as_ref().map(|name| foundry_keystore(name, env)).transpose()?;
    let sources: Vec<&str> = [
        args.keystore.as_ref().map(|_| "--keystore"),
        account.as_ref().map(|_| "--account"),
        args.key_file.as_ref().map(|_| "--key-file"),
        from_env.as_ref().map(|_| PRIVATE_KEY_ENV),
    ]
    .into_iter()
    .flatten()
    .collect();
    if sources.len() > 1 {
        return Err(CliError::Usage(format!(
            "the payer key is given more than once ({}): give exactly one",
            sources.join(", ")
        )));
    }
    // Foundry's ETH_KEYSTORE counts only when no other source is given.
    let eth_keystore =
        if sources.is_empty() { env.var(ETH_KEYSTORE_ENV).map(|p| p.as_str().into()) } else { None };
    if let Some(path) = args.keystore.clone().or(account).or(eth_keystore) {
        let password_file =
            args.password_file.clone().or_else(|| env.var(ETH_PASSWORD_ENV).map(|p| p.as_str().into()));
        let password = match (&password_file, env.var(PASSWORD_ENV)) {
            (Some(file), _) => Zeroizing::new(read_secret(file, "keystore password file")?),
            (None, Some(password)) => password,
            (None, None) => prompt.password(&path).ok_or_else(|| {
                CliError::Usage(format!(
                    "the keystore {} needs a password: set {PASSWORD_ENV} or --password-file (or run on a \
                     terminal to be asked)",
                    path.display()
                ))
            })?,
        };
        if !path.exists() {
            return Err(CliError::Usage(format!("the keystore {} does not exist", path.display())));
        }
        return PrivateKeySigner::decrypt_keystore(&path, password.as_bytes()).map_err(|e| {
            // eth-keystore's errors (wrong password: "Mac Mismatch", I/O, JSON) carry no secret.
            let text = e.to_string();
            if text.contains("Mac Mismatch") {
                CliError::Usage(format!(
                    "wrong password for the keystore {} (check {PASSWORD_ENV} or --password-file)",
                    path.display()
                ))
            } else {
                CliError::Usage(format!("cannot decrypt the keystore {}: {text}", path.display()))
            }
        });
    }
    if let Some(path) = &args.key_file {
        let text = Zeroizing::new(read_secret(path, "key file")?);
        return parse_key(&text, &format!("the key file {}", path.display()));
    }
    match from_env {
        Some(text) => parse_key(&text, PRIVATE_KEY_ENV),
        None => Err(CliError::Usage(format!(
            "this command needs the payer's key: set {PRIVATE_KEY_ENV}, or pass --key-file, --keystore or \
             --account"
        ))),
    }
}

/// The path of Foundry keystore `name` (`~/.foundry/keystores/NAME`, as `cast wallet import`
/// writes it).
fn foundry_keystore(name: &str, env: &dyn Environment) -> Result<std::path::PathBuf, CliError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(CliError::Usage(format!(
            "--account {name:?}: a keystore name, not a path (use --keystore)"
        )));
    }
    let home = env.var("HOME").ok_or_else(|| CliError::Usage("--account needs HOME to be set".into()))?;
    let path = std::path::Path::new(home.as_str()).join(".foundry").join("keystores").join(name);
    if !path.exists() {
        return Err(CliError::Usage(format!(
            "no Foundry keystore named {name:?} ({} does not exist; `cast wallet list` lists them)",
            path.display()
        )));
    }
    Ok(path)
}

/// The session key, from `--session-key-file` or `X402_SESSION_KEY` (not both), if any.
pub(crate) fn session(args: &KeyArgs, env: &dyn Environment) -> Result<Option<PrivateKeySigner>, CliError> {
    let from_env = env.var(SESSION_KEY_ENV);
    match (&args.session_key_file, from_env) {
        (Some(_), Some(_)) => Err(CliError::Usage(format!(
            "the session key is given twice ({SESSION_KEY_ENV} and --session-key-file): give one"
        ))),
        (Some(path), None) => {
            let text = Zeroizing::new(read_secret(path, "session key file")?);
            parse_key(&text, &format!("the session key file {}", path.display())).map(Some)
        }
        (None, Some(text)) => parse_key(&text, SESSION_KEY_ENV).map(Some),
        (None, None) => Ok(None),
    }
}

/// Parses a hex private key (`0x` optional, surrounding whitespace ignored). The error names
/// `source`, never the text.
fn parse_key(text: &str, source: &str) -> Result<PrivateKeySigner, CliError> {
    let hex = text.trim();
    let digits = hex.strip_prefix("0x").unwrap_or(hex);
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CliError::Usage(format!(
            "{source} is not a hex private key (64 hex digits, 0x optional; the value is not shown)"
        )));
    }
    digits.parse().map_err(|_| {
        CliError::Usage(format!("{source} is not a valid secp256k1 private key (the value is not shown)"))
    })
}

/// Reads a file holding a secret, without its trailing newline.
fn read_secret(path: &Path, what: &str) -> Result<String, CliError> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read the {what} {}: {e}", path.display())))?;
    let keep = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(keep);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Vars(HashMap<&'static str, String>);

    impl Environment for Vars {
        fn var(&self, name: &str) -> Option<Zeroizing<String>> {
            self.0.get(name).cloned().map(Zeroizing::new)
        }
    }

    fn vars(pairs: &[(&'static str, &str)]) -> Vars {
        Vars(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect())
    }

    /// A terminal that types `0` (or has no terminal).
    struct Typed(Option<&'static str>);

    impl Prompt for Typed {
        fn password(&self, _: &Path) -> Option<Zeroizing<String>> {
            self.0.map(|p| Zeroizing::new(p.to_owned()))
        }
    }

    const NO_TTY: Typed = Typed(None);

    fn payer(args: &KeyArgs, env: &dyn Environment) -> Result<PrivateKeySigner, CliError> {
        super::payer(args, env, &NO_TTY)
    }

    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    #[test]
    fn keys_come_from_exactly_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, format!("{}\n", &KEY[2..])).unwrap();
        let want: PrivateKeySigner = KEY.parse().unwrap();

        let from_env = payer(&KeyArgs::default(), &vars(&[(PRIVATE_KEY_ENV, KEY)])).unwrap();
        assert_eq!(from_env.address(), want.address());
        let args = KeyArgs { key_file: Some(file.clone()), ..KeyArgs::default() };
        assert_eq!(payer(&args, &vars(&[])).unwrap().address(), want.address());

        let both = payer(&args, &vars(&[(PRIVATE_KEY_ENV, KEY)])).unwrap_err();
        assert!(both.to_string().contains("more than once (--key-file, X402_PRIVATE_KEY)"), "{both}");
        let none = payer(&KeyArgs::default(), &vars(&[])).unwrap_err();
        assert!(none.to_string().contains("needs the payer's key"), "{none}");

        let session = session(&KeyArgs::default(), &vars(&[(SESSION_KEY_ENV, KEY)])).unwrap();
        assert_eq!(session.map(|k| k.address()), Some(want.address()));
        assert!(super::session(&KeyArgs::default(), &vars(&[])).unwrap().is_none());
        let args = KeyArgs { session_key_file: Some(file), ..KeyArgs::default() };
        assert!(super::session(&args, &vars(&[(SESSION_KEY_ENV, KEY)])).is_err());
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        let secretish = "deadbeefcafe";
        for bad in [
            format!("0x{secretish}"),
            format!("{secretish}{}", "g".repeat(52)),
            format!("0x{}", "0".repeat(64)), // hex, but not a valid scalar
            format!("0x{}zz", &KEY[2..64]),
            "not a key at all deadbeefcafe".to_owned(),
        ] {
            let err = payer(&KeyArgs::default(), &vars(&[(PRIVATE_KEY_ENV, &bad)])).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, CliError::Usage(_)), "{text}");
            assert!(text.contains("X402_PRIVATE_KEY is not a"), "{text}");
            assert!(!text.contains(secretish) && !text.contains(&bad), "echoed: {text}");
        }
    }

    #[test]
    fn keystores_need_the_right_password() {
        let dir = tempfile::tempdir().unwrap();
        let key: PrivateKeySigner = KEY.parse().unwrap();
        let mut rng = rand08::thread_rng();
        PrivateKeySigner::encrypt_keystore(dir.path(), &mut rng, key.to_bytes(), "hunter2", Some("ks.json"))
            .unwrap();
        let args = KeyArgs { keystore: Some(dir.path().join("ks.json")), ..KeyArgs::default() };
        let ok = payer(&args, &vars(&[(PASSWORD_ENV, "hunter2")])).unwrap();
        assert_eq!(ok.address(), key.address());

        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let with_file =
            KeyArgs { keystore: args.keystore.clone(), password_file: Some(pw), ..KeyArgs::default() };
        assert_eq!(payer(&with_file, &vars(&[])).unwrap().address(), key.address());

        let wrong = payer(&args, &vars(&[(PASSWORD_ENV, "hunter3")])).unwrap_err();
        assert!(wrong.to_string().contains("wrong password for the keystore"), "{wrong}");
        assert!(!wrong.to_string().contains("hunter") && !wrong.to_string().contains("Mac"), "{wrong}");
        let missing = payer(&args, &vars(&[])).unwrap_err();
        assert!(missing.to_string().contains(PASSWORD_ENV), "{missing}");
        // On a terminal the password is asked for.
        let typed = super::payer(&args, &vars(&[]), &Typed(Some("hunter2"))).unwrap();
        assert_eq!(typed.address(), key.address());

        // Foundry's conventions: ETH_KEYSTORE and ETH_PASSWORD (a password file), and
        // --account NAME in ~/.foundry/keystores.
        let keystore = dir.path().join("ks.json").display().to_string();
        let pw_path = dir.path().join("pw").display().to_string();
        let eth = vars(&[(ETH_KEYSTORE_ENV, &keystore), (ETH_PASSWORD_ENV, &pw_path)]);
        assert_eq!(payer(&KeyArgs::default(), &eth).unwrap().address(), key.address());
        let home = tempfile::tempdir().unwrap();
        let store = home.path().join(".foundry/keystores");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::copy(dir.path().join("ks.json"), store.join("payer")).unwrap();
        let home_var = home.path().display().to_string();
        let args = KeyArgs { account: Some("payer".into()), ..KeyArgs::default() };
        let env = vars(&[("HOME", &home_var), (PASSWORD_ENV, "hunter2")]);
        assert_eq!(payer(&args, &env).unwrap().address(), key.address());
        let args = KeyArgs { account: Some("nobody".into()), ..KeyArgs::default() };
        assert!(payer(&args, &env).unwrap_err().to_string().contains("no Foundry keystore named \"nobody\""));
        // ETH_KEYSTORE does not count as a second key next to X402_PRIVATE_KEY.
        let both = vars(&[(ETH_KEYSTORE_ENV, &keystore), (PRIVATE_KEY_ENV, KEY)]);
        assert_eq!(payer(&KeyArgs::default(), &both).unwrap().address(), key.address());
    }
}
