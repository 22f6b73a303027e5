//! The lab's certificates, tokens and kubeconfigs.
//!
//! One CA per lab signs the API server's serving certificate; clients
//! authenticate with bearer tokens from a static token file (admin in
//! `system:masters`, each node as weft's ServiceAccount identity), so RBAC
//! decides what every node may do exactly as in a cluster.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading random bytes from /dev/urandom")]
    Random(#[source] std::io::Error),
}

/// Files the API server and its clients use, all under one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }
    /// The API server's client certificate towards kubelets (`logs`,
    /// `exec`), in group system:masters.
    pub fn kubelet_client_cert(&self) -> PathBuf {
        self.dir.join("kubelet-client.crt")
    }
    pub fn kubelet_client_key(&self) -> PathBuf {
        self.dir.join("kubelet-client.key")
    }
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("tokens.csv")
    }

    /// Generates the CA, the serving certificate for `server_ips` and the
    /// ServiceAccount signing key.
    pub fn generate(dir: &Path, server_ips: &[IpAddr]) -> Result<Pki, PkiError> {
        let gen_err = |what| move |source| PkiError::Generate { what, source };
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };

        let ca_key = KeyPair::generate().map_err(gen_err("CA key"))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("CA"))?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "weft-lab CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err("CA"))?;
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);

        let mut names: Vec<String> = [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
            "127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.extend(server_ips.iter().map(|ip| ip.to_string()));
        let server_key = KeyPair::generate().map_err(gen_err("API server key"))?;
        let mut server_params = CertificateParams::new(names).map_err(gen_err("API server"))?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .map_err(gen_err("API server certificate"))?;

        let client_key = KeyPair::generate().map_err(gen_err("kubelet client key"))?;
        let mut client_params =
            CertificateParams::new(Vec::<String>::new()).map_err(gen_err("kubelet client"))?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver-kubelet-client");
        client_params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .map_err(gen_err("kubelet client certificate"))?;

        let sa_key = KeyPair::generate().map_err(gen_err("ServiceAccount key"))?;

        write(&pki.ca_cert(), ca_cert.pem().as_bytes())?;
        write(&pki.server_cert(), server_cert.pem().as_bytes())?;
        write(&pki.server_key(), server_key.serialize_pem().as_bytes())?;
        write(&pki.kubelet_client_cert(), client_cert.pem().as_bytes())?;
        write(
            &pki.kubelet_client_key(),
            client_key.serialize_pem().as_bytes(),
        )?;
        write(&pki.sa_key(), sa_key.serialize_pem().as_bytes())?;
        write(&pki.sa_pub(), sa_key.public_key_pem().as_bytes())?;
        Ok(pki)
    }
}

/// One line of the API server's `--token-auth-file`.
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub token: String,
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl TokenUser {
    fn csv_line(&self) -> String {
        format!(
            "{},{},{},\"{}\"\n",
            self.token,
            self.user,
            self.uid,
            self.groups.join(",")
        )
    }
}

/// Writes the static token file (`token,user,uid,"group1,group2"`).
pub fn write_token_file(path: &Path, users: &[TokenUser]) -> Result<(), PkiError> {
    let text: String = users.iter().map(TokenUser::csv_line).collect();
    write(path, text.as_bytes())
}

/// A fresh random bearer token (32 hex characters).
pub fn random_token() -> Result<String, PkiError> {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(PkiError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A kubeconfig for `server`, trusting `ca_pem`, authenticating with `token`.
pub fn kubeconfig(cluster: &str, server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca_b64 = base64(ca_pem.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca_b64}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {user}
current-context: {cluster}
"
    )
}

/// Writes `bytes` to `path` with mode 0600.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    std::io::Write::write_all(&mut f, bytes).map_err(err)
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "input {input:?}");
        }
    }

    #[test]
    fn token_file_quotes_groups() {
        let u = TokenUser {
            token: "t".into(),
            user: "admin".into(),
            uid: "1".into(),
            groups: vec!["system:masters".into(), "x".into()],
        };
        assert_eq!(u.csv_line(), "t,admin,1,\"system:masters,x\"\n");
    }
}
