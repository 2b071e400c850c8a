//! TLS 1.3 with rustls (ring provider), an ephemeral self-signed server
//! certificate, and a client that does not trust certificates.
//!
//! Trust comes from the HMAC handshake ([`crate::handshake`]), which is bound
//! to the TLS session through the exporter ([`exporter_binding`]); the
//! certificate only has to make the TLS handshake itself sound, so the client
//! accepts any certificate but still checks the handshake signature made with
//! it (a relaying attacker cannot reuse another server's key exchange).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use crate::error::TransportError;
use crate::handshake::Binding;

/// Exporter label for the handshake binding (RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-mpctl-handshake-v1";

/// Server name the client sends (SNI); the server ignores it.
pub const SERVER_NAME: &str = "mpctl";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn setup_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::TlsSetup(e.to_string())
}

/// A server configuration with a freshly generated self-signed certificate
/// (ECDSA P-256), TLS 1.3 only, ring provider.
pub fn server_config() -> Result<Arc<ServerConfig>, TransportError> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| setup_err(format!("cannot generate the ephemeral certificate: {e}")))?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(setup_err)?;
    // No resumption: every connection gets a full handshake and fresh secrets.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client configuration that accepts any server certificate (see the module
/// doc), TLS 1.3 only, ring provider, no resumption.
pub fn client_config() -> Result<Arc<ClientConfig>, TransportError> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertSignedHandshake { provider }))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The server name to use with [`client_config`].
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from(SERVER_NAME)
            .expect("\"mpctl\" is a valid DNS name")
            .to_owned(),
    )
}

/// The 32-byte channel binding of a TLS connection (either end): the exporter
/// with [`EXPORTER_LABEL`] and no context.
pub fn exporter_binding<D>(conn: &rustls::ConnectionCommon<D>) -> Result<Binding, std::io::Error> {
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(|e| std::io::Error::other(format!("TLS exporter unavailable: {e}")))
}

/// Accepts any certificate, but verifies the TLS handshake signature with the
/// provider's algorithms.
#[derive(Debug)]
struct AnyCertSignedHandshake {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertSignedHandshake {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
