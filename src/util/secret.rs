//! age (age-encryption.org/v1): files in Git encrypted for the machines
//! that may read them, decrypted only there, into their private releases.
//!
//! Why age and the `age` crate: the reference CLI (Debian's `age`)
//! reads and writes the same files, its recipients can be the machines'
//! own ssh host keys (no new key to distribute: the fleet's known_hosts
//! already pins them), and the format has no options to get wrong.
//! Plaintext is held in [`Plaintext`], zeroed when dropped, and never put
//! into a message: errors name the file and the identity, nothing more.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// Decrypted bytes, zeroed when dropped.
pub type Plaintext = Zeroizing<Vec<u8>>;

/// A file that could not be decrypted, or an identity that could not be
/// read: told apart from other failures so that status and metrics can
/// say "a secret could not be decrypted" (the message names the file and
/// the identity).
#[derive(Debug)]
pub struct Undecryptable(pub String);

impl std::fmt::Display for Undecryptable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Undecryptable {}

/// Whether `e` is, or was caused by, an [`Undecryptable`].
pub fn is_undecryptable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Undecryptable>())
}

/// The identity that decrypts this machine's files: an age identity file
/// (`AGE-SECRET-KEY-1...` lines, as `age-keygen` writes them) or an
/// OpenSSH private key (by default the machine's ed25519 host key).
pub struct Identity {
    path: PathBuf,
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl Identity {
    /// Reads the identity at `path`; the error names the file and what is
    /// wrong with it (missing, unreadable, passphrase-protected, not a key).
    pub fn load(path: &Path) -> Result<Identity> {
        let text = Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("reading age identity {}", path.display()))?,
        );
        let keys: Vec<Box<dyn age::Identity + Send + Sync>> = if text
            .windows(10)
            .any(|w| w == b"-----BEGIN")
        {
            vec![ssh_identity(&text, path)?]
        } else {
            let file = age::IdentityFile::from_buffer(BufReader::new(&text[..]))
                .ok()
                .and_then(|f| f.into_identities().ok())
                .unwrap_or_default();
            if file.is_empty() {
                bail!(
                        "age identity {} holds no key (an AGE-SECRET-KEY-1... line, or an OpenSSH private key)",
                        path.display()
                    );
            }
            file
        };
        Ok(Identity {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// Decrypts `ciphertext` (binary or ASCII-armored), the content of
    /// `name`; the error names `name` and this identity.
    pub fn decrypt(&self, ciphertext: &[u8], name: &Path) -> Result<Plaintext> {
        let fail = |why: &str| {
            anyhow::Error::new(Undecryptable(format!(
                "cannot decrypt {} with age identity {}: {why}",
                name.display(),
                self.path.display()
            )))
        };
        let reader = age::armor::ArmoredReader::new(ciphertext);
        let decryptor = age::Decryptor::new_buffered(reader).map_err(|e| fail(&reason(&e)))?;
        if decryptor.is_scrypt() {
            return Err(fail(
                "it is encrypted with a passphrase, not for a key; encrypt it for the machine's key (`provision fleet encrypt`)",
            ));
        }
        let mut stream = decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|e| fail(&reason(&e)))?;
        let mut out = Zeroizing::new(Vec::new());
        stream
            .read_to_end(&mut out)
            .map_err(|_| fail("its content is damaged (the authentication tag does not match)"))?;
        Ok(out)
    }
}

/// An OpenSSH private key as an age identity.
fn ssh_identity(text: &[u8], path: &Path) -> Result<Box<dyn age::Identity + Send + Sync>> {
    let key = age::ssh::Identity::from_buffer(BufReader::new(text), None).with_context(|| {
        format!(
            "age identity {} is not an OpenSSH private key age can use",
            path.display()
        )
    })?;
    match key {
        age::ssh::Identity::Unencrypted(_) => Ok(Box::new(key)),
        age::ssh::Identity::Encrypted(_) => bail!(
            "age identity {} is protected by a passphrase, which provision, running unattended, cannot type",
            path.display()
        ),
        age::ssh::Identity::Unsupported(_) => bail!(
            "age identity {} is an ssh key of a type age does not support (ed25519 and RSA are)",
            path.display()
        ),
    }
}

/// What went wrong, in words for the operator (never the content).
fn reason(e: &age::DecryptError) -> String {
    match e {
        age::DecryptError::NoMatchingKeys => {
            "the file is not encrypted for this key (another machine's, or made before this key was a recipient; `provision fleet rekey` re-encrypts it)".into()
        }
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            "it is not an age file (or a damaged one)".into()
        }
        age::DecryptError::InvalidMac | age::DecryptError::DecryptionFailed => {
            "its header or content is damaged".into()
        }
        other => other.to_string(),
    }
}

/// A recipient that a file is encrypted for: an age public key
/// (`age1...`) or an OpenSSH public key line (`ssh-ed25519 AAAA...`,
/// `ssh-rsa AAAA...`, a comment allowed).
pub fn recipient(text: &str) -> Result<Box<dyn age::Recipient + Send>> {
    let text = text.trim();
    if text.starts_with("age1") {
        let r: age::x25519::Recipient = text
            .parse()
            .map_err(|e| anyhow::anyhow!("{text:?} is not an age recipient: {e}"))?;
        return Ok(Box::new(r));
    }
    let r: age::ssh::Recipient = text.parse().map_err(|e| {
        anyhow::anyhow!("{text:?} is not an age recipient (age1... or an ssh-ed25519/ssh-rsa public key): {e:?}")
    })?;
    Ok(Box::new(r))
}

/// Encrypts `plaintext` for every one of `recipients`, ASCII-armored (so
/// that it reads as text in Git) when `armor`.
pub fn encrypt(
    plaintext: &[u8],
    recipients: &[Box<dyn age::Recipient + Send>],
    armor: bool,
) -> Result<Vec<u8>> {
    let encryptor = age::Encryptor::with_recipients(
        recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient),
    )
    .context("encrypting: no recipients")?;
    let mut out = Vec::with_capacity(plaintext.len() + 512);
    let format = if armor {
        age::armor::Format::AsciiArmor
    } else {
        age::armor::Format::Binary
    };
    let armored = age::armor::ArmoredWriter::wrap_output(&mut out, format).context("encrypting")?;
    let mut w = encryptor.wrap_output(armored).context("encrypting")?;
    w.write_all(plaintext).context("encrypting")?;
    w.finish().and_then(|a| a.finish()).context("encrypting")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn x25519() -> (tempfile::TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = age::x25519::Identity::generate();
        let path = dir.path().join("key.txt");
        std::fs::write(
            &path,
            format!("# a comment\n{}\n", key.to_string().expose_secret()),
        )
        .expect("writing the key");
        (dir, path, key.to_public().to_string())
    }

    #[test]
    fn a_file_round_trips_armored_or_not_and_another_key_is_named() {
        let (_d, path, public) = x25519();
        let id = Identity::load(&path).expect("load");
        for armor in [true, false] {
            let c = encrypt(b"s3cret", &[recipient(&public).expect("recipient")], armor)
                .expect("encrypt");
            assert_eq!(c.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"), armor);
            let p = id.decrypt(&c, Path::new("app/key.age")).expect("decrypt");
            assert_eq!(&p[..], b"s3cret");
        }
        let (_d2, other, other_public) = x25519();
        let c = encrypt(b"s3cret", &[recipient(&other_public).expect("r")], true).expect("e");
        let e = id
            .decrypt(&c, Path::new("app/key.age"))
            .expect_err("not for this key");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("app/key.age")
                && msg.contains(&path.display().to_string())
                && msg.contains("not encrypted for this key")
                && !msg.contains("s3cret"),
            "{msg}"
        );
        assert!(Identity::load(&other).is_ok());
    }

    #[test]
    fn bad_identities_and_recipients_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let e = Identity::load(&missing).err().expect("missing");
        assert!(format!("{e:#}").contains(&missing.display().to_string()));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "hello\n").expect("write");
        let e = Identity::load(&junk).err().expect("junk");
        assert!(format!("{e:#}").contains("holds no key"), "{e:#}");
        assert!(recipient("ssh-dss AAAA").is_err());
        assert!(recipient("age1nope").is_err());
    }
}
