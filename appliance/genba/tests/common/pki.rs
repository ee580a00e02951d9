//! A test CA with a server certificate (localhost, 127.0.0.1) and client certificates, as PEM
//! files, for the brokers the tests run with TLS and client certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca_params = || {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name
                .push(DnType::CommonName, "Genba test CA");
            p
        };
        let key = KeyPair::generate().unwrap();
        let cert = ca_params().self_signed(&key).unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir: dir.to_owned(),
            ca,
            issuer: Issuer::new(ca_params(), key),
        }
    }

    /// Writes NAME.crt and NAME.key for `names` (DNS names or IP addresses) and returns them.
    fn issue(
        &self,
        file: &str,
        cn: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (crt, pem) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        (crt, pem)
    }

    pub fn server(&self) -> (PathBuf, PathBuf) {
        self.issue(
            "server",
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        self.issue(cn, cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}
