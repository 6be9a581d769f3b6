//! `serve --web.config.file`: the Prometheus exporter-toolkit web
//! configuration (the file node_exporter and the official exporters take),
//! read into a rustls server configuration and a basic-auth checker.
//!
//! Everything that can be wrong is found here, when the file is read: an
//! unknown key, a TLS version below 1.2, an unknown client-auth type, a
//! certificate or key that cannot be read or do not belong together, a
//! client-auth type that verifies without `client_ca_file`, a password
//! that is not a bcrypt hash. `serve` reads the file before attaching any
//! probe, and again on SIGHUP (a bad new file keeps the old one).
//!
//! Basic auth as exporter-toolkit does it: bcrypt through the `bcrypt`
//! crate, the outcome cached per (user, password) so that a scraper
//! sending the same credentials every 15 s costs one bcrypt, not one per
//! scrape. The cache is keyed by an HMAC under a key drawn at start, so
//! it holds no password, nor anything to test guesses against offline.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex, RwLock},
};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use rustls::{
    DistinguishedName, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use serde::Deserialize;

/// The file as written; any other key is refused.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: HashMap<String, String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: ClientAuth,
    client_ca_file: Option<PathBuf>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
}

/// Go's `tls.ClientAuthType` names, as exporter-toolkit takes them.
#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq)]
enum ClientAuth {
    #[default]
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// Spelt as the file spells them (and as messages repeat them).
#[allow(clippy::upper_case_acronyms)]
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, PartialOrd)]
enum TlsVersion {
    TLS10,
    TLS11,
    TLS12,
    TLS13,
}

/// A web configuration, ready to serve with.
pub struct WebConfig {
    /// None: plain HTTP (a file with only `basic_auth_users`, as
    /// exporter-toolkit allows).
    pub tls: Option<Arc<ServerConfig>>,
    pub auth: Option<Arc<BasicAuth>>,
}

impl WebConfig {
    /// No file: plain HTTP, no authentication.
    pub fn open() -> WebConfig {
        WebConfig {
            tls: None,
            auth: None,
        }
    }

    /// Reads and checks `path`; errors are one line.
    pub fn load(path: &Path) -> Result<WebConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // Relative paths in the file are relative to the file, as in
        // exporter-toolkit.
        let dir = path.parent().unwrap_or(Path::new("."));
        WebConfig::parse(&text, dir).map_err(|e| {
            // serde's messages may span lines: one line it is.
            let message = format!("{e:#}").replace('\n', " ");
            anyhow!("{}: {message}", path.display())
        })
    }

    /// `text` as a web configuration file in `dir`.
    fn parse(text: &str, dir: &Path) -> Result<WebConfig> {
        // An empty file is an empty configuration (YAML's null).
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_norway::from_str(text)?
        };
        let tls = match file.tls_server_config {
            Some(t) => tls_config(t, dir)?,
            None => None,
        };
        let auth = if file.basic_auth_users.is_empty() {
            None
        } else {
            Some(Arc::new(BasicAuth::new(file.basic_auth_users)?))
        };
        Ok(WebConfig { tls, auth })
    }
}

/// The configuration in force, swapped on reload: TLS is read per
/// connection, the users per request.
pub type Shared = Arc<RwLock<Arc<WebConfig>>>;

pub fn shared(config: WebConfig) -> Shared {
    Arc::new(RwLock::new(Arc::new(config)))
}

pub fn current(shared: &Shared) -> Arc<WebConfig> {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn tls_config(t: TlsFile, dir: &Path) -> Result<Option<Arc<ServerConfig>>> {
    let (cert_file, key_file) = match (t.cert_file, t.key_file) {
        (Some(c), Some(k)) => (dir.join(c), dir.join(k)),
        // Neither: TLS off, as in exporter-toolkit, unless the rest asks
        // for it.
        (None, None) => {
            if t.client_auth_type != ClientAuth::NoClientCert
                || t.client_ca_file.is_some()
                || t.min_version.is_some()
                || t.max_version.is_some()
            {
                bail!("tls_server_config: cert_file and key_file are missing");
            }
            return Ok(None);
        }
        (None, Some(_)) => bail!("tls_server_config: cert_file is missing"),
        (Some(_), None) => bail!("tls_server_config: key_file is missing"),
    };
    let min = t.min_version.unwrap_or(TlsVersion::TLS12);
    let max = t.max_version.unwrap_or(TlsVersion::TLS13);
    for (key, v) in [("min_version", min), ("max_version", max)] {
        if v < TlsVersion::TLS12 {
            bail!("tls_server_config: {key} {v:?} is too weak: TLS12 or TLS13");
        }
    }
    if min > max {
        bail!("tls_server_config: min_version {min:?} is above max_version {max:?}");
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::TLS12, &rustls::version::TLS12),
        (TlsVersion::TLS13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect();

    // ring: rustls's provider that builds with a plain C cross compiler
    // for the static arm64 release. rustls 0.23.48 deprecates it for
    // lacking post-quantum key exchange (aws-lc-rs has it); TLS 1.2 and
    // 1.3 with X25519 and the P curves are what Prometheus offers.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .context("tls_server_config")?;
    let verifier = client_verifier(
        t.client_auth_type,
        t.client_ca_file.map(|f| dir.join(f)),
        &provider,
    )?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| anyhow!("cert_file {}: {}", cert_file.display(), pem_error(e)))?;
    if certs.is_empty() {
        bail!("cert_file {}: no certificate in it", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| anyhow!("key_file {}: {}", key_file.display(), pem_error(e)))?;

    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow!(
            "cert_file {} and key_file {}: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    // HTTP/1.1 is all `serve` speaks.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of that kind in it".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

fn client_verifier(
    kind: ClientAuth,
    ca_file: Option<PathBuf>,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>> {
    let verifies = matches!(
        kind,
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
    );
    let Some(ca_file) = ca_file else {
        if verifies {
            bail!("tls_server_config: client_auth_type {kind:?} needs client_ca_file");
        }
        return Ok(match kind {
            ClientAuth::NoClientCert => None,
            _ => Some(Arc::new(AnyClientCert {
                mandatory: kind == ClientAuth::RequireAnyClientCert,
                algorithms: provider.signature_verification_algorithms,
            })),
        });
    };
    if !verifies {
        // exporter-toolkit refuses this too: a CA that nothing checks.
        bail!(
            "tls_server_config: client_ca_file is given but client_auth_type {kind:?} does not verify client certificates (VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
        );
    }
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&ca_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("client_ca_file {}: {}", ca_file.display(), pem_error(e)))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| anyhow!("client_ca_file {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        bail!("client_ca_file {}: no certificate in it", ca_file.display());
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if kind == ClientAuth::VerifyClientCertIfGiven {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    Ok(Some(builder.build().map_err(|e| {
        anyhow!("client_ca_file {}: {e}", ca_file.display())
    })?))
}

/// `RequestClientCert` and `RequireAnyClientCert`: a client certificate is
/// asked for (and with the second required) but not checked against any
/// CA, as Go does; its handshake signature is still checked, so the client
/// holds the key of what it sent.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Most (user, password) outcomes remembered; exporter-toolkit keeps 100.
const CACHE_SIZE: usize = 100;

/// `basic_auth_users`: user -> bcrypt hash, and the outcomes so far.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// HMAC-SHA256 of (user, password) under `key` -> allowed.
    cache: Mutex<HashMap<[u8; 32], bool>>,
    key: ring::hmac::Key,
}

/// Credentials from an `Authorization: Basic` header.
pub struct Credentials {
    user: String,
    password: String,
}

impl Credentials {
    /// None when the header is absent or not Basic.
    pub fn from_header(value: Option<&[u8]>) -> Option<Credentials> {
        let value = std::str::from_utf8(value?).ok()?.trim();
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

impl BasicAuth {
    fn new(users: HashMap<String, String>) -> Result<BasicAuth> {
        for (user, hash) in &users {
            if bcrypt::HashParts::from_str(hash).is_err() {
                bail!("basic_auth_users: {user}'s password is not a bcrypt hash");
            }
        }
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| anyhow!("no random numbers for the password cache"))?;
        Ok(BasicAuth {
            users,
            cache: Mutex::new(HashMap::new()),
            key,
        })
    }

    fn cache_key(&self, c: &Credentials) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(c.user.len() as u64).to_le_bytes());
        ctx.update(c.user.as_bytes());
        ctx.update(c.password.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The remembered outcome for `c`, if any: no bcrypt.
    pub fn cached(&self, c: &Credentials) -> Option<bool> {
        let key = self.cache_key(c);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied()
    }

    /// Checks `c` with bcrypt (tens of milliseconds at cost 10: call it
    /// off the async thread) and remembers the outcome.
    pub fn verify(&self, c: &Credentials) -> bool {
        let allowed = match self.users.get(&c.user) {
            Some(hash) => bcrypt::verify(&c.password, hash).unwrap_or(false),
            None => {
                // An unknown user costs as much as a known one, so that
                // timing does not tell which users exist.
                if let Some(hash) = self.users.values().next() {
                    let _ = bcrypt::verify(&c.password, hash);
                }
                false
            }
        };
        let key = self.cache_key(c);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_SIZE
            && let Some(old) = cache.keys().next().copied()
        {
            cache.remove(&old);
        }
        cache.insert(key, allowed);
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig> {
        WebConfig::parse(text, Path::new("/nonexistent"))
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn empty_and_auth_only_files_serve_plain_http() {
        let c = parse("").unwrap();
        assert!(c.tls.is_none() && c.auth.is_none());
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = parse(&format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
        assert!(c.tls.is_none());
        let auth = c.auth.unwrap();
        let alice = |p: &str| Credentials {
            user: "alice".into(),
            password: p.into(),
        };
        assert_eq!(auth.cached(&alice("secret")), None);
        assert!(auth.verify(&alice("secret")));
        assert_eq!(auth.cached(&alice("secret")), Some(true));
        assert!(!auth.verify(&alice("wrong")));
        assert_eq!(auth.cached(&alice("wrong")), Some(false));
        let bob = Credentials {
            user: "bob".into(),
            password: "secret".into(),
        };
        assert!(!auth.verify(&bob));
    }

    #[test]
    fn the_cache_stays_bounded_and_keys_split_user_from_password() {
        let hash = bcrypt::hash("x", 4).unwrap();
        let auth = parse(&format!(
            "basic_auth_users:\n  ab: '{hash}'\n  a: '{hash}'\n"
        ))
        .unwrap()
        .auth
        .unwrap();
        let c = |u: &str, p: &str| Credentials {
            user: u.into(),
            password: p.into(),
        };
        assert_ne!(auth.cache_key(&c("ab", "x")), auth.cache_key(&c("a", "bx")));
        for i in 0..CACHE_SIZE + 20 {
            auth.verify(&c("ab", &i.to_string()));
        }
        assert_eq!(auth.cache.lock().unwrap().len(), CACHE_SIZE);
    }

    #[test]
    fn reads_the_basic_header() {
        let h = |s: &str| Credentials::from_header(Some(s.as_bytes()));
        // "alice:pa:ss" (a colon in the password stays in it).
        let c = h("Basic YWxpY2U6cGE6c3M=").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "pa:ss"));
        assert!(h("basic YWxpY2U6cGE6c3M=").is_some());
        assert!(h("Bearer abc").is_none());
        assert!(h("Basic !!!").is_none());
        // No colon.
        assert!(h("Basic YWxpY2U=").is_none());
        assert!(Credentials::from_header(None).is_none());
    }

    #[test]
    fn refuses_unknown_keys_weak_versions_and_unknown_settings() {
        assert!(error("tls_config:\n  cert_file: a\n").contains("unknown field `tls_config`"));
        assert!(
            error("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: []\n")
                .contains("unknown field `cipher_suites`")
        );
        assert!(
            error("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n")
                .contains("min_version TLS10 is too weak")
        );
        assert!(
            error("tls_server_config:\n  cert_file: a\n  key_file: b\n  max_version: TLS11\n")
                .contains("max_version TLS11 is too weak")
        );
        assert!(
            error("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n")
                .contains("unknown variant `SSL3`")
        );
        assert!(
            error(
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n"
            )
            .contains("above max_version")
        );
        assert!(
            error(
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: VerifyEverything\n"
            )
            .contains("unknown variant `VerifyEverything`")
        );
        assert!(
            error(
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n"
            )
            .contains("RequireAndVerifyClientCert needs client_ca_file")
        );
        assert!(error("tls_server_config:\n  cert_file: a\n").contains("key_file is missing"));
        assert!(error("tls_server_config:\n  key_file: b\n").contains("cert_file is missing"));
        assert!(
            error("tls_server_config:\n  client_auth_type: RequireAnyClientCert\n")
                .contains("cert_file and key_file are missing")
        );
        // The files are read last: every check above came first.
        assert!(
            error("tls_server_config:\n  cert_file: a\n  key_file: b\n")
                .contains("cert_file /nonexistent/a: No such file")
        );
        assert!(
            error("basic_auth_users:\n  alice: secret\n")
                .contains("alice's password is not a bcrypt hash")
        );
        assert!(error("basic_auth_users: [alice]\n").contains("invalid type"));
    }

    #[test]
    fn load_names_the_file_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, "tls_server_config:\n  nope: 1\n").unwrap();
        let e = format!("{:#}", WebConfig::load(&path).err().unwrap());
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = format!(
            "{:#}",
            WebConfig::load(&dir.path().join("none")).err().unwrap()
        );
        assert!(
            e.contains("cannot read") && e.contains("No such file"),
            "{e}"
        );
    }
}
