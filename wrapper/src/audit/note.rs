//! C2SP [signed notes](https://c2sp.org/signed-note) with Ed25519 keys, in the text formats
//! of Go's `golang.org/x/mod/sumdb/note` (keys and notes written by one verify with the
//! other).
//!
//! - A **note** is UTF-8 text of one or more `\n`-terminated lines (no other control
//!   characters), a blank line, and one or more signature lines
//!   `— NAME BASE64(KEY_ID ‖ SIGNATURE)` (an em dash U+2014 and a space first).
//! - A key has a **name** (non-empty, no whitespace, no `+`) and a **key id**: the first 4
//!   bytes, big-endian, of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)` ([`key_id`]).
//! - **Verifier key** (public, give it to auditors): `NAME+KEYID+BASE64(0x01 ‖ public key)`,
//!   key id in 8 lowercase hex digits ([`NoteVerifier`]).
//! - **Signer key** (secret, a file readable by the writer only):
//!   `PRIVATE+KEY+NAME+KEYID+BASE64(0x01 ‖ 32-byte seed)` ([`NoteSigner`]).
//!
//! **Rotation**: make a new key (a new name, e.g. `billing-audit-2027`, or the same name and a
//! new key, hence a new key id), give its verifier key to the auditors, who then trust both
//! (a verifier accepts a note signed by any key it trusts: [`open`] takes a list), and switch
//! the writer to the new signer key. Notes signed by the old key keep verifying as long as
//! the old verifier key is kept in the list; drop it once no checkpoint signed with it
//! needs checking. A signature by a key the verifier does not know is ignored, never an
//! error, so a note may carry the old and the new signature during the switch
//! ([`sign`] takes several signers).
//!
//! ```
//! use map_wrapper::audit::note::{open, NoteSigner};
//!
//! let signer = NoteSigner::generate("example.com/audit")?;
//! let verifier = signer.verifier();
//! let msg = signer.sign("hello\n")?;
//! let note = open(msg.as_bytes(), &[verifier.clone()])?;
//! assert_eq!(note.text(), "hello\n");
//! // The public key travels as one line of text.
//! let vkey = verifier.to_string();
//! assert!(vkey.starts_with("example.com/audit+"));
//! # Ok::<(), map_wrapper::audit::note::NoteError>(())
//! ```

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The algorithm byte of Ed25519 keys.
pub const ALG_ED25519: u8 = 0x01;

/// The longest note [`open`] reads: 1 MiB (a checkpoint is a few hundred bytes).
pub const MAX_NOTE_BYTES: usize = 1 << 20;

/// The most signature lines [`open`] reads (as Go's `note.Open`).
pub const MAX_SIGNATURES: usize = 100;

const SIG_PREFIX: &str = "\u{2014} ";

/// Why a key or a note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The note is not well formed; the text says which rule it breaks.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A key string (or key file) is not well formed; the text says why.
    #[error("bad key: {0}")]
    BadKey(&'static str),
    /// A trusted key (same name and key id) signed the note, and the signature is wrong:
    /// the text or the signature was changed.
    #[error("invalid signature for key {name}+{key_id:08x}")]
    InvalidSignature {
        /// The key's name.
        name: String,
        /// The key's id.
        key_id: u32,
    },
    /// No key in the trusted list signed the note (signatures by unknown keys are ignored).
    #[error("no trusted key signed the note (it is signed by: {signed_by})")]
    NotTrusted {
        /// The `name+keyid` of every signature found, comma-separated.
        signed_by: String,
    },
    /// A key file could not be read or written.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The operating system's random source failed while making a key.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// Whether `name` is a valid key name: non-empty, no whitespace (Unicode `White_Space`), no
/// `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

/// The key id of an Ed25519 key: the first 4 bytes, big-endian, of
/// `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Splits `NAME+HEX8+BASE64` into its name, key id and decoded key bytes.
fn split_key(s: &str) -> Result<(&str, u32, Vec<u8>), NoteError> {
    let mut parts = s.splitn(3, '+');
    let (Some(name), Some(hex), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::BadKey("expected NAME+KEYID+BASE64"));
    };
    if !is_valid_key_name(name) {
        return Err(NoteError::BadKey("the name is empty or has whitespace or '+'"));
    }
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NoteError::BadKey("the key id is not 8 hex digits"));
    }
    let id = u32::from_str_radix(hex, 16).map_err(|_| NoteError::BadKey("the key id is not 8 hex digits"))?;
    let bytes = B64.decode(b64).map_err(|_| NoteError::BadKey("the key is not standard base64"))?;
    match bytes.first() {
        None => Err(NoteError::BadKey("the key is empty")),
        Some(&ALG_ED25519) if bytes.len() == 33 => Ok((name, id, bytes)),
        Some(&ALG_ED25519) => Err(NoteError::BadKey("an Ed25519 key must be 32 bytes")),
        Some(_) => Err(NoteError::BadKey("unknown key algorithm (only 0x01, Ed25519)")),
    }
}

/// A trusted public key: checks signatures by one name and key id.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for an Ed25519 public key under `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::BadKey("the name is empty or has whitespace or '+'"));
        }
        Ok(NoteVerifier { name: name.to_owned(), id: key_id(name, key.as_bytes()), key })
    }

    /// Parses a verifier key `NAME+KEYID+BASE64(0x01 ‖ public key)` (surrounding whitespace,
    /// such as a file's final newline, is ignored).
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let (name, id, bytes) = split_key(vkey.trim())?;
        let pk: [u8; 32] =
            bytes[1..].try_into().map_err(|_| NoteError::BadKey("an Ed25519 key must be 32 bytes"))?;
        if key_id(name, &pk) != id {
            return Err(NoteError::BadKey("the key id does not match the name and key"));
        }
        let key =
            VerifyingKey::from_bytes(&pk).map_err(|_| NoteError::BadKey("not an Ed25519 public key"))?;
        Ok(NoteVerifier { name: name.to_owned(), id, key })
    }

    /// Reads a verifier key file (one line).
    pub fn load(path: &Path) -> Result<Self, NoteError> {
        Self::parse(&read_key_file(path)?)
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `sig` (64 bytes, without the key id) is this key's signature of `text`.
    pub fn verify(&self, text: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(sig) else { return false };
        self.key.verify_strict(text, &sig).is_ok()
    }
}

/// The verifier key text: `NAME+KEYID+BASE64(0x01 ‖ public key)`.
impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = [0u8; 33];
        b[0] = ALG_ED25519;
        b[1..].copy_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(b))
    }
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteVerifier({self})")
    }
}

impl std::str::FromStr for NoteVerifier {
    type Err = NoteError;
    fn from_str(s: &str) -> Result<Self, NoteError> {
        Self::parse(s)
    }
}

/// A secret signing key with its name and key id. Its `Debug` shows the name and id only;
/// the seed is zeroed when it is dropped (`ed25519-dalek`'s `zeroize`).
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteSigner({}+{:08x}, secret withheld)", self.name, self.id)
    }
}

impl NoteSigner {
    /// A new key under `name`, from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| NoteError::Random(e.to_string()))?;
        let s = Self::from_seed(name, seed);
        seed.fill(0);
        s
    }

    /// The key whose Ed25519 seed (RFC 8032 private key) is `seed`.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::BadKey("the name is empty or has whitespace or '+'"));
        }
        let key = SigningKey::from_bytes(&seed);
        Ok(NoteSigner { name: name.to_owned(), id: key_id(name, key.verifying_key().as_bytes()), key })
    }

    /// Parses a signer key `PRIVATE+KEY+NAME+KEYID+BASE64(0x01 ‖ seed)` (surrounding
    /// whitespace ignored). The key id must match the public key derived from the seed.
    pub fn parse(skey: &str) -> Result<Self, NoteError> {
        let rest = skey
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::BadKey("a signer key starts with PRIVATE+KEY+"))?;
        let (name, id, bytes) = split_key(rest)?;
        let seed: [u8; 32] =
            bytes[1..].try_into().map_err(|_| NoteError::BadKey("an Ed25519 key must be 32 bytes"))?;
        let s = Self::from_seed(name, seed)?;
        if s.id != id {
            return Err(NoteError::BadKey("the key id does not match the name and key"));
        }
        Ok(s)
    }

    /// Reads a signer key file (one line, as written by [`save`](Self::save)).
    pub fn load(path: &Path) -> Result<Self, NoteError> {
        Self::parse(&read_key_file(path)?)
    }

    /// Writes the signer key to a new file (never over an existing one), readable and
    /// writable by its owner only (mode 0600 on Unix), and syncs it.
    pub fn save(&self, path: &Path) -> Result<(), NoteError> {
        let err = |e: std::io::Error| NoteError::KeyFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(err)?;
        f.write_all(self.to_key_string().as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)
    }

    /// The secret key text `PRIVATE+KEY+NAME+KEYID+BASE64(0x01 ‖ seed)`: keep it secret.
    pub fn to_key_string(&self) -> String {
        let mut b = [0u8; 33];
        b[0] = ALG_ED25519;
        b[1..].copy_from_slice(self.key.as_bytes());
        let s = format!("PRIVATE+KEY+{}+{:08x}+{}", self.name, self.id, B64.encode(b));
        b.fill(0);
        s
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// The public half, to give to verifiers.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), id: self.id, key: self.key.verifying_key() }
    }

    /// Signs `text` (which must be a valid note text: see [`sign`]) and returns the note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        sign(text, &[self])
    }

    /// The signature line (without its `\n`) of this key over `text`.
    fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut b = Vec::with_capacity(68);
        b.extend_from_slice(&self.id.to_be_bytes());
        b.extend_from_slice(&sig.to_bytes());
        format!("{SIG_PREFIX}{} {}", self.name, B64.encode(b))
    }
}

fn read_key_file(path: &Path) -> Result<String, NoteError> {
    let err = |reason: String| NoteError::KeyFile { path: path.display().to_string(), reason };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > 4096 {
        return Err(err("longer than a key file can be (4096 bytes)".into()));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

/// Checks the rules of a note's text: non-empty, `\n`-terminated lines, UTF-8 without
/// control characters other than `\n`, no blank line at the end.
fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() {
        return Err(NoteError::Malformed("the text is empty"));
    }
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("the text does not end with a newline"));
    }
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("the text has a control character"));
    }
    Ok(())
}

/// Signs `text` with every signer (in order) and returns the note: the text, a blank line,
/// one signature line per signer. The text must be non-empty, end with `\n`, and have no
/// control character but `\n`; it may not contain a blank line at its end (`\n\n`).
pub fn sign(text: &str, signers: &[&NoteSigner]) -> Result<String, NoteError> {
    check_text(text)?;
    if text.ends_with("\n\n") {
        return Err(NoteError::Malformed("the text ends with a blank line"));
    }
    if signers.is_empty() {
        return Err(NoteError::Malformed("a note needs at least one signature"));
    }
    let mut out = String::with_capacity(text.len() + 1 + signers.len() * 120);
    out.push_str(text);
    out.push('\n');
    for s in signers {
        out.push_str(&s.signature_line(text));
        out.push('\n');
    }
    Ok(out)
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NoteSignature {
    /// The key's name.
    pub name: String,
    /// The key id (the first 4 bytes of the signature's base64 payload).
    pub key_id: u32,
    /// The base64 payload as written: key id and signature.
    pub base64: String,
}

/// A note whose signature by at least one trusted key checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    verified: Vec<NoteSignature>,
    unverified: Vec<NoteSignature>,
}

impl Note {
    /// The signed text (every line `\n`-terminated).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signatures by trusted keys (all verified).
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.verified
    }

    /// The signatures by keys not in the trusted list (not checked).
    pub fn unverified_signatures(&self) -> &[NoteSignature] {
        &self.unverified
    }
}

/// A note split into its text and signature lines, no signature checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedNote<'a> {
    /// The text (every line `\n`-terminated).
    pub text: &'a str,
    /// The signature lines, in order.
    pub signatures: Vec<(NoteSignature, Vec<u8>)>,
}

/// Splits a note into text and signatures, enforcing every syntax rule of the format: valid
/// UTF-8, no control characters but `\n`, a blank line before the signature block, every
/// signature line `— NAME BASE64` with a valid name and at least 5 decoded bytes, at most
/// [`MAX_SIGNATURES`], the note at most [`MAX_NOTE_BYTES`]. The signatures are not checked.
pub fn parse(msg: &[u8]) -> Result<ParsedNote<'_>, NoteError> {
    if msg.len() > MAX_NOTE_BYTES {
        return Err(NoteError::Malformed("longer than MAX_NOTE_BYTES"));
    }
    let msg = std::str::from_utf8(msg).map_err(|_| NoteError::Malformed("not UTF-8"))?;
    if msg.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("a control character other than newline"));
    }
    let split = msg.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, sigs) = (&msg[..=split], &msg[split + 2..]);
    if text == "\n" {
        return Err(NoteError::Malformed("the text is empty"));
    }
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(NoteError::Malformed("the signature block is empty or does not end with a newline"));
    }
    let mut signatures = Vec::new();
    for line in sigs[..sigs.len() - 1].split('\n') {
        if signatures.len() == MAX_SIGNATURES {
            return Err(NoteError::Malformed("more than MAX_SIGNATURES signatures"));
        }
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or(NoteError::Malformed("a signature line must start with '— '"))?;
        let (name, b64) =
            rest.split_once(' ').ok_or(NoteError::Malformed("a signature line is '— NAME BASE64'"))?;
        if !is_valid_key_name(name) {
            return Err(NoteError::Malformed("a signature's key name is invalid"));
        }
        let raw = B64.decode(b64).map_err(|_| NoteError::Malformed("a signature is not standard base64"))?;
        if raw.len() < 5 {
            return Err(NoteError::Malformed("a signature is shorter than 5 bytes"));
        }
        let key_id = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        signatures.push((
            NoteSignature { name: name.to_owned(), key_id, base64: b64.to_owned() },
            raw[4..].to_vec(),
        ));
    }
    Ok(ParsedNote { text, signatures })
}

/// Opens a note: parses it ([`parse`]) and checks the signature of every trusted key (same
/// name and key id) that signed it. A wrong signature by a trusted key is an error
/// ([`NoteError::InvalidSignature`]); signatures by other keys are ignored (listed in
/// [`Note::unverified_signatures`]); a note no trusted key signed is
/// [`NoteError::NotTrusted`].
pub fn open(msg: &[u8], trusted: &[NoteVerifier]) -> Result<Note, NoteError> {
    let parsed = parse(msg)?;
    let mut verified: Vec<NoteSignature> = Vec::new();
    let mut unverified: Vec<NoteSignature> = Vec::new();
    for (sig, raw) in parsed.signatures {
        match trusted.iter().find(|v| v.name == sig.name && v.id == sig.key_id) {
            None => {
                if !unverified.contains(&sig) {
                    unverified.push(sig);
                }
            }
            Some(v) => {
                if verified.iter().any(|s| s.name == sig.name && s.key_id == sig.key_id) {
                    continue;
                }
                if !v.verify(parsed.text.as_bytes(), &raw) {
                    return Err(NoteError::InvalidSignature { name: sig.name, key_id: sig.key_id });
                }
                verified.push(sig);
            }
        }
    }
    if verified.is_empty() {
        let signed_by: Vec<String> =
            unverified.iter().map(|s| format!("{}+{:08x}", s.name, s.key_id)).collect();
        return Err(NoteError::NotTrusted { signed_by: signed_by.join(", ") });
    }
    Ok(Note { text: parsed.text.to_owned(), verified, unverified })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Go's golang.org/x/mod/sumdb/note tests (note_test.go): keys and a note signed by Go.
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    #[test]
    fn go_reference_keys_parse_and_print_back_exactly() {
        let v = NoteVerifier::parse(PETER_VKEY).unwrap();
        assert_eq!((v.name(), v.key_id()), ("PeterNeumann", 0xc74f20a3));
        assert_eq!(v.to_string(), PETER_VKEY);
        let s = NoteSigner::parse(PETER_SKEY).unwrap();
        assert_eq!(s.to_key_string(), PETER_SKEY);
        assert_eq!(s.verifier(), v);
        assert_eq!(NoteVerifier::parse(ENOCH_VKEY).unwrap().key_id(), 0xaf0cfe78);
    }

    #[test]
    fn signing_go_reference_text_gives_go_reference_note_byte_for_byte() {
        // Ed25519 is deterministic: the same key and text give Go's exact signature.
        let s = NoteSigner::parse(PETER_SKEY).unwrap();
        assert_eq!(s.sign(TEXT).unwrap(), format!("{TEXT}\n{PETER_SIG}"));
    }

    #[test]
    fn go_reference_note_opens_with_its_key_and_not_with_another() {
        let peter = NoteVerifier::parse(PETER_VKEY).unwrap();
        let enoch = NoteVerifier::parse(ENOCH_VKEY).unwrap();
        let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        let n = open(msg.as_bytes(), std::slice::from_ref(&peter)).unwrap();
        assert_eq!(n.text(), TEXT);
        assert_eq!(n.signatures().len(), 1);
        assert_eq!(n.unverified_signatures()[0].name, "EnochRoot");
        // Both trusted: both verified (Enoch's signature is Go's too).
        assert_eq!(open(msg.as_bytes(), &[peter.clone(), enoch.clone()]).unwrap().signatures().len(), 2);
        // Only Peter's signature, only Enoch trusted: not trusted.
        let only_peter = format!("{TEXT}\n{PETER_SIG}");
        assert!(matches!(open(only_peter.as_bytes(), &[enoch]), Err(NoteError::NotTrusted { .. })));
        // A changed text fails Peter's signature.
        let changed = only_peter.replace("cryptography", "cryptographY");
        assert_eq!(
            open(changed.as_bytes(), std::slice::from_ref(&peter)),
            Err(NoteError::InvalidSignature { name: "PeterNeumann".into(), key_id: 0xc74f20a3 })
        );
        // A key with the same name but another key (another id) does not check Peter's note.
        let impostor = NoteSigner::from_seed("PeterNeumann", [7; 32]).unwrap().verifier();
        assert!(matches!(open(only_peter.as_bytes(), &[impostor]), Err(NoteError::NotTrusted { .. })));
    }

    #[test]
    fn every_mangling_of_a_go_key_is_refused() {
        for key in [PETER_VKEY, PETER_SKEY] {
            let b = key.as_bytes();
            let check = |k: &str| {
                if key == PETER_VKEY {
                    NoteVerifier::parse(k).is_err()
                } else {
                    NoteSigner::parse(k).is_err()
                }
            };
            for i in 0..b.len() {
                for j in i + 1..=b.len() {
                    if (i, j) != (0, b.len()) {
                        let s = std::str::from_utf8(&b[i..j]).unwrap();
                        // Trimming is allowed; a substring that only loses whitespace is the key.
                        assert!(check(s), "{s:?} accepted");
                    }
                }
                let mut m = b.to_vec();
                m[i] = m[i].wrapping_add(1);
                if let Ok(s) = std::str::from_utf8(&m) {
                    assert!(check(s), "{s:?} accepted");
                }
            }
        }
        // Go's "wrong length key, with adjusted key hash" and "unknown algorithm" cases.
        assert!(NoteVerifier::parse(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
        .is_err());
        assert!(NoteVerifier::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .is_err());
    }

    #[test]
    fn malformed_notes_are_refused_with_the_rule_they_break() {
        let peter = NoteVerifier::parse(PETER_VKEY).unwrap();
        let good = format!("{TEXT}\n{PETER_SIG}");
        for (bad, why) in [
            (format!("{TEXT}{PETER_SIG}"), "no blank line"),
            (format!("{TEXT}\n{}", PETER_SIG.trim_end()), "does not end with a newline"),
            (format!("{TEXT}\n- PeterNeumann x08go\n"), "must start with"),
            (format!("{TEXT}\n\u{2014} PeterNeumann\n"), "is '— NAME BASE64'"),
            (format!("{TEXT}\n\u{2014} Bad+Name AAAAAAA=\n"), "key name is invalid"),
            (format!("{TEXT}\n\u{2014} P AAAA\n"), "shorter than 5 bytes"),
            (format!("{TEXT}\n\u{2014} P !!!!\n"), "not standard base64"),
            (good.replace("problem,", "problem,\r"), "control character"),
            (format!("\n\n{PETER_SIG}"), "text is empty"),
            (format!("{TEXT}\n{}", PETER_SIG.repeat(101)), "more than MAX_SIGNATURES"),
        ] {
            let e = open(bad.as_bytes(), std::slice::from_ref(&peter)).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(open(&[0xff, b'\n', b'\n'], std::slice::from_ref(&peter))
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
        // Repeated signatures of one key count once (as in Go).
        assert_eq!(open(format!("{good}{PETER_SIG}").as_bytes(), &[peter]).unwrap().signatures().len(), 1);
    }

    #[test]
    fn sign_refuses_texts_that_would_not_open() {
        let s = NoteSigner::from_seed("k", [1; 32]).unwrap();
        for bad in ["", "no newline", "a\n\n", "tab\there\n"] {
            assert!(s.sign(bad).is_err(), "{bad:?}");
        }
        assert!(NoteSigner::from_seed("has space", [1; 32]).is_err());
        assert!(NoteSigner::from_seed("has+plus", [1; 32]).is_err());
        assert!(NoteSigner::from_seed("", [1; 32]).is_err());
    }

    #[test]
    fn a_note_signed_by_two_keys_opens_with_either_during_rotation() {
        let old = NoteSigner::from_seed("audit-2026", [1; 32]).unwrap();
        let new = NoteSigner::from_seed("audit-2027", [2; 32]).unwrap();
        let msg = sign("rotating\n", &[&old, &new]).unwrap();
        assert_eq!(open(msg.as_bytes(), &[old.verifier()]).unwrap().signatures()[0].name, "audit-2026");
        assert_eq!(open(msg.as_bytes(), &[new.verifier()]).unwrap().signatures()[0].name, "audit-2027");
        let only_new = new.sign("after\n").unwrap();
        // Verifiers trusting both keys accept notes of either.
        let both = [old.verifier(), new.verifier()];
        assert!(open(only_new.as_bytes(), &both).is_ok());
        assert!(open(old.sign("before\n").unwrap().as_bytes(), &both).is_ok());
    }

    #[test]
    fn key_files_round_trip_and_the_secret_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = NoteSigner::generate("example.com/audit").unwrap();
        let path = dir.path().join("audit.key");
        s.save(&path).unwrap();
        assert!(s.save(&path).is_err(), "never overwrites a key file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let back = NoteSigner::load(&path).unwrap();
        assert_eq!(back.to_key_string(), s.to_key_string());
        let vpath = dir.path().join("audit.pub");
        std::fs::write(&vpath, format!("{}\n", s.verifier())).unwrap();
        assert_eq!(NoteVerifier::load(&vpath).unwrap(), s.verifier());
        assert!(!format!("{s:?}").contains(&s.to_key_string()[12..]), "Debug withholds the secret");
        assert_ne!(
            NoteSigner::generate("x").unwrap().to_key_string(),
            NoteSigner::generate("x").unwrap().to_key_string()
        );
    }

    proptest! {
        /// Arbitrary bytes, and arbitrary changes of a good note, never panic.
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), pos: usize, byte: u8) {
            let peter = NoteVerifier::parse(PETER_VKEY).unwrap();
            let _ = open(&bytes, std::slice::from_ref(&peter));
            let _ = NoteVerifier::parse(&String::from_utf8_lossy(&bytes));
            let _ = NoteSigner::parse(&String::from_utf8_lossy(&bytes));
            let mut good = format!("{TEXT}\n{PETER_SIG}").into_bytes();
            let i = pos % good.len();
            let changed = good[i] != byte;
            good[i] = byte;
            let r = open(&good, &[peter]);
            if changed {
                prop_assert!(r.is_err() || r.unwrap().text() == TEXT);
            }
        }
    }
}
