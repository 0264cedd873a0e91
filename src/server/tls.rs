//! TLS for implicit-TLS listeners (RFC 8314) and STLS (RFC 2595), behind one small API so
//! that nothing else names a TLS crate. Two backends, chosen by cargo feature:
//!
//! - `rustls` (default): TLS 1.3 and 1.2, PKCS#8, PKCS#1 and SEC1 keys, no libssl at run time.
//! - `native-tls`: the system's OpenSSL. Its server side builds on Mozilla's "intermediate"
//!   profile, which turns TLS 1.3 off, so it serves TLS 1.2 only, and it reads PKCS#8 keys
//!   (`BEGIN PRIVATE KEY`) only.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

#[cfg(not(any(feature = "rustls", feature = "native-tls")))]
compile_error!("pop3d needs a TLS backend: enable the `rustls` or the `native-tls` feature");

/// The name of the compiled-in backend, for logs.
pub const BACKEND: &str = if cfg!(feature = "rustls") {
    "rustls"
} else {
    "native-tls"
};

/// A server certificate and key, ready to accept handshakes. Cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    #[cfg(feature = "rustls")]
    inner: futures_rustls::TlsAcceptor,
    #[cfg(all(feature = "native-tls", not(feature = "rustls")))]
    inner: Arc<async_native_tls::TlsAcceptor>,
}

/// A TLS connection over any byte stream.
pub struct TlsStream<S> {
    #[cfg(feature = "rustls")]
    inner: futures_rustls::server::TlsStream<S>,
    #[cfg(all(feature = "native-tls", not(feature = "rustls")))]
    inner: async_native_tls::TlsStream<S>,
}

impl Acceptor {
    /// Reads a PEM certificate chain and private key. Errors name the file and the problem,
    /// for an administrator to fix.
    pub fn load(cert: &Path, key: &Path) -> Result<Acceptor, String> {
        let cert_pem = std::fs::read(cert)
            .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?;
        let key_pem =
            std::fs::read(key).map_err(|e| format!("cannot read key {}: {e}", key.display()))?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| {
            format!(
                "certificate {} / key {}: {e}",
                cert.display(),
                key.display()
            )
        })
    }

    #[cfg(feature = "rustls")]
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Acceptor, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        if chain.is_empty() {
            return Err("no certificate in the PEM file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| format!("bad private key PEM: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // rustls offers only AEAD suites with forward secrecy; pin the versions explicitly.
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("certificate and key do not fit: {e}"))?;
        Ok(Acceptor {
            inner: futures_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    #[cfg(all(feature = "native-tls", not(feature = "rustls")))]
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Acceptor, String> {
        // Without this check a mismatched pair loads, and every handshake then fails.
        let cert = openssl::x509::X509::from_pem(cert_pem)
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        let key = openssl::pkey::PKey::private_key_from_pem(key_pem)
            .map_err(|e| format!("bad private key PEM: {e}"))?;
        let public = cert.public_key().map_err(|e| e.to_string())?;
        if !public.public_eq(&key) {
            return Err("certificate and key do not fit: the key is not the certificate's".into());
        }
        let identity = async_native_tls::Identity::from_pkcs8(cert_pem, key_pem)
            .map_err(|e| format!("certificate and PKCS#8 key not usable: {e}"))?;
        let acceptor = native_tls::TlsAcceptor::builder(identity)
            .min_protocol_version(Some(async_native_tls::Protocol::Tlsv12))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Acceptor {
            inner: Arc::new(acceptor.into()),
        })
    }

    /// Runs the server side of a handshake.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> io::Result<TlsStream<S>> {
        #[cfg(feature = "rustls")]
        let inner = self.inner.accept(stream).await?;
        #[cfg(all(feature = "native-tls", not(feature = "rustls")))]
        let inner = self.inner.accept(stream).await.map_err(io::Error::other)?;
        Ok(TlsStream { inner })
    }
}

/// A self-signed certificate and key (PEM) for `names`, for the demo and tests.
pub fn self_signed(names: &[&str]) -> Result<(String, String), String> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
