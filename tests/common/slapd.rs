//! A real `slapd` of a test's own, shared by the LDAP plugin's tests and
//! the daemon's (by `#[path]`): its cn=config made with `slapadd -n0` in a
//! temporary folder, an mdb database for `dc=lessor,dc=test`, on free
//! loopback ports for ldap:// (StartTLS offered) and ldaps://, with the
//! test CA's server certificate. Stopped (and its folder removed) when
//! dropped.
//!
//! The directory: `ou=people` and `ou=groups` (with the groupOfNames
//! `cn=readers`), the root DN `cn=admin,dc=lessor,dc=test` as the test's
//! own view, and `cn=lessor,dc=lessor,dc=test`, an ordinary entry that may
//! write under `ou=people` and `ou=groups` only (and its own password):
//! lessor's least-privileged admin. Modules: back_mdb, ppolicy (with a
//! default policy that honours `pwdAccountLockedTime`), pw-sha2 (for
//! `{SSHA512}`) and argon2 when Debian's slapd ships it.
//!
//! `LESSOR_TEST_SLAPD` names the binary (`/usr/sbin/slapd` otherwise;
//! `scripts/test` installs Debian's `slapd` and `ldap-utils`); `slapadd`
//! is taken from the same folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use rand::distr::{Alphanumeric, SampleString};

pub const SUFFIX: &str = "dc=lessor,dc=test";
pub const ROOT_DN: &str = "cn=admin,dc=lessor,dc=test";
pub const ADMIN_DN: &str = "cn=lessor,dc=lessor,dc=test";
pub const PEOPLE: &str = "ou=people,dc=lessor,dc=test";
pub const GROUPS: &str = "ou=groups,dc=lessor,dc=test";
pub const READERS: &str = "cn=readers,ou=groups,dc=lessor,dc=test";

/// Where Debian's slapd keeps its modules.
const MODULES: &str = "/usr/lib/ldap";

pub struct Slapd {
    /// ldap:// (StartTLS offered).
    pub port: u16,
    /// ldaps:// (on 127.0.0.1, and on 127.0.0.2, which the test CA's
    /// server certificate does not name).
    pub tls_port: u16,
    pub root_password: String,
    /// The password of `cn=lessor` (lessor's admin).
    pub admin_password: String,
    /// Whether slapd's argon2 module is loaded (`{ARGON2}` passwords).
    pub argon2: bool,
    dir: tempfile::TempDir,
    child: Child,
}

/// The test CA's folder (`scripts/test` makes it).
pub fn tls_dir() -> PathBuf {
    std::env::var_os("LESSOR_TEST_TLS_DIR").map_or_else(|| "/var/tmp/lessor-test-tls".into(), Into::into)
}

pub fn random(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Slapd {
    pub async fn start() -> Self {
        // A port taken between our probe and slapd's bind: try anew.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("slapd did not start: {last}");
    }

    async fn try_start() -> Result<Self, String> {
        let slapd = std::env::var("LESSOR_TEST_SLAPD").unwrap_or_else(|_| "/usr/sbin/slapd".into());
        let slapadd = Path::new(&slapd).with_file_name("slapadd");
        let dir = tempfile::Builder::new().prefix("lessor-test-slapd-").tempdir().unwrap();
        let (conf, data) = (dir.path().join("conf"), dir.path().join("data"));
        std::fs::create_dir(&conf).unwrap();
        std::fs::create_dir(&data).unwrap();
        let argon2 = Path::new(MODULES).join("argon2.so").exists();
        assert!(
            Path::new(MODULES).join("pw-sha2.so").exists(),
            "{MODULES}/pw-sha2.so is missing: the {{SSHA512}} tests need slapd's pw-sha2 module (Debian's slapd ships it)"
        );
        let root_password = random(24);
        let admin_password = random(24);
        let tls = tls_dir();
        let config = fill(
            CONFIG,
            &[
                ("dir", &dir.path().display().to_string()),
                ("ca", &tls.join("ca.pem").display().to_string()),
                ("cert", &tls.join("server.pem").display().to_string()),
                ("key", &tls.join("server.key").display().to_string()),
                ("modules", MODULES),
                ("argon2", if argon2 { "\nolcModuleLoad: argon2" } else { "" }),
                ("root_password", &root_password),
            ],
        );
        let data_ldif = fill(DATA, &[("admin_password", &admin_password)]);
        for (name, text, args) in
            [("config.ldif", &config, vec!["-n0"]), ("data.ldif", &data_ldif, vec!["-b", SUFFIX])]
        {
            let file = dir.path().join(name);
            std::fs::write(&file, text).unwrap();
            let out = Command::new(&slapadd)
                .args(&args)
                .arg("-F")
                .arg(&conf)
                .arg("-l")
                .arg(&file)
                .output()
                .unwrap_or_else(|e| panic!("run {} (scripts/test installs slapd): {e}", slapadd.display()));
            assert!(out.status.success(), "slapadd {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let (port, tls_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("slapd.log")).unwrap();
        let child = Command::new(&slapd)
            .arg("-h")
            // ldaps:// on 127.0.0.2 too: a name the server's certificate lacks.
            .arg(format!(
                "ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/ ldaps://127.0.0.2:{tls_port}/"
            ))
            .arg("-F")
            .arg(&conf)
            // In the foreground, logging nothing but what fails to start.
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {slapd} (scripts/test installs slapd): {e}"));
        let mut server = Self { port, tls_port, root_password, admin_password, argon2, dir, child };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if server.connect_root().await.is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(server.dir.path().join("slapd.log")).unwrap_or_default();
                return Err(format!("slapd exited ({status}):\n{log}"));
            }
            if tokio::time::Instant::now() > deadline {
                return Err("slapd did not answer within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    async fn connect_root(&self) -> Result<Ldap, String> {
        let mut ldap = connect(&self.url()).await?;
        let result = ldap.simple_bind(ROOT_DN, &self.root_password).await.map_err(|e| e.to_string())?;
        if result.rc != 0 {
            return Err(format!("root bind: {result}"));
        }
        Ok(ldap)
    }

    /// A connection bound as the root DN: the test's own view.
    pub async fn root(&self) -> Ldap {
        self.connect_root().await.expect("bind as the root DN")
    }

    /// A simple bind as `dn` on a new plain connection: the result code
    /// (0: the login works; 49: invalid credentials).
    pub async fn bind_rc(&self, dn: &str, password: &str) -> u32 {
        let mut ldap = connect(&self.url()).await.expect("connect");
        let rc = ldap.simple_bind(dn, password).await.expect("a bind answer").rc;
        let _ = ldap.unbind().await;
        rc
    }

    /// Whether `dn` exists (looked at as the root DN).
    pub async fn exists(&self, dn: &str) -> bool {
        let mut root = self.root().await;
        let result = root.search(dn, Scope::Base, "(objectClass=*)", vec!["1.1"]).await.unwrap();
        match result.1.rc {
            0 => !result.0.is_empty(),
            32 => false,
            rc => panic!("search {dn}: rc {rc}"),
        }
    }

    /// The values of `attr` on `dn` (empty when either is missing).
    pub async fn values(&self, dn: &str, attr: &str) -> Vec<String> {
        let mut root = self.root().await;
        let ldap3::SearchResult(entries, result) =
            root.search(dn, Scope::Base, "(objectClass=*)", vec![attr]).await.unwrap();
        if result.rc == 32 {
            return Vec::new();
        }
        entries
            .into_iter()
            .flat_map(|e| SearchEntry::construct(e).attrs.into_iter())
            .filter(|(k, _)| k.eq_ignore_ascii_case(attr))
            .flat_map(|(_, v)| v)
            .collect()
    }

    /// A person under `ou=people` with a plaintext password, made by the
    /// root DN: a static account lessor did not create.
    pub async fn add_person(&self, cn: &str, password: &str) -> String {
        let dn = format!("cn={cn},{PEOPLE}");
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        let attrs = vec![
            ("objectClass".to_string(), set(&["inetOrgPerson"])),
            ("cn".to_string(), set(&[cn])),
            ("sn".to_string(), set(&[cn])),
            ("userPassword".to_string(), set(&[password])),
        ];
        let result = self.root().await.add(&dn, attrs).await.unwrap();
        assert_eq!(result.rc, 0, "add {dn}: {result}");
        dn
    }

    /// Locks `dn` for good (ppolicy's `pwdAccountLockedTime: 000001010000Z`).
    pub async fn lock(&self, dn: &str) {
        let mods = vec![Mod::Replace(
            "pwdAccountLockedTime".to_string(),
            std::iter::once("000001010000Z".to_string()).collect(),
        )];
        let result = self.root().await.modify(dn, mods).await.unwrap();
        assert_eq!(result.rc, 0, "lock {dn}: {result}");
    }

    /// Disables `dn` as a directory administrator would: nobody can bind
    /// as it, whatever its password, and a password change (which clears
    /// ppolicy's lock) does not enable it again. `enable` undoes it.
    pub async fn disable(&self, dn: &str) {
        let mods =
            vec![Mod::Replace("description".to_string(), std::iter::once("disabled".to_string()).collect())];
        let result = self.root().await.modify(dn, mods).await.unwrap();
        assert_eq!(result.rc, 0, "disable {dn}: {result}");
    }

    pub async fn enable(&self, dn: &str) {
        let mods = vec![Mod::Delete("description".to_string(), Default::default())];
        let result = self.root().await.modify(dn, mods).await.unwrap();
        assert_eq!(result.rc, 0, "enable {dn}: {result}");
    }

    /// `ldapwhoami -x` as `dn` over plain ldap://: the OpenLDAP client's
    /// own verdict on a login. `Ok(authzid)` or `Err(stderr)`.
    pub fn ldapwhoami(&self, dn: &str, password: &str) -> Result<String, String> {
        let out = Command::new("ldapwhoami")
            .args(["-x", "-H", &self.url(), "-D", dn, "-w", password])
            .output()
            .unwrap_or_else(|e| panic!("run ldapwhoami (ldap-utils; scripts/test installs it): {e}"));
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        }
    }
}

/// `text` with each `@name@` replaced by its value, and the DNs every
/// template uses.
fn fill(text: &str, values: &[(&str, &str)]) -> String {
    let fixed = [
        ("suffix", SUFFIX),
        ("root_dn", ROOT_DN),
        ("admin_dn", ADMIN_DN),
        ("people", PEOPLE),
        ("groups", GROUPS),
        ("readers", READERS),
    ];
    let mut out = text.to_string();
    for (name, value) in fixed.iter().chain(values) {
        out = out.replace(&format!("@{name}@"), value);
    }
    out
}

/// cn=config: modules, schemas, TLS, the database and who may do what.
/// lessor's admin writes under ou=people and ou=groups only (and may set
/// its own password, for rotate-root); users may read, anonymous may bind,
/// except as an entry marked `description: disabled` (see
/// [`Slapd::disable`]), whose password lessor may still set.
const CONFIG: &str = "dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: @dir@/slapd.pid
olcTLSCACertificateFile: @ca@
olcTLSCertificateFile: @cert@
olcTLSCertificateKeyFile: @key@

dn: cn=module{0},cn=config
objectClass: olcModuleList
cn: module{0}
olcModulePath: @modules@
olcModuleLoad: back_mdb
olcModuleLoad: ppolicy
olcModuleLoad: pw-sha2@argon2@

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif

include: file:///etc/ldap/schema/cosine.ldif

include: file:///etc/ldap/schema/inetorgperson.ldif

dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend

dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcAccess: {0}to * by * none

dn: olcDatabase={1}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcDbDirectory: @dir@/data
olcDbMaxSize: 67108864
olcSuffix: @suffix@
olcRootDN: @root_dn@
olcRootPW: @root_password@
olcAccess: {0}to dn.subtree=\"@people@\" filter=(description=disabled) attrs=userPassword by dn.exact=\"@admin_dn@\" write by * none
olcAccess: {1}to dn.subtree=\"@people@\" attrs=userPassword by dn.exact=\"@admin_dn@\" write by self write by anonymous auth by * none
olcAccess: {2}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {3}to dn.subtree=\"@people@\" by dn.exact=\"@admin_dn@\" write by users read by * none
olcAccess: {4}to dn.subtree=\"@groups@\" by dn.exact=\"@admin_dn@\" write by users read by * none
olcAccess: {5}to * by users read by * none

dn: olcOverlay={0}ppolicy,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {0}ppolicy
olcPPolicyDefault: cn=default,ou=policies,@suffix@
";

/// The entries: the base, lessor's admin, the OUs, a password policy and
/// a group whose first member is the admin (groupOfNames needs one).
const DATA: &str = "dn: @suffix@
objectClass: dcObject
objectClass: organization
dc: lessor
o: lessor test

dn: @admin_dn@
objectClass: person
cn: lessor
sn: lessor
userPassword: @admin_password@

dn: @people@
objectClass: organizationalUnit
ou: people

dn: @groups@
objectClass: organizationalUnit
ou: groups

dn: ou=policies,@suffix@
objectClass: organizationalUnit
ou: policies

dn: cn=default,ou=policies,@suffix@
objectClass: organizationalRole
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdLockout: TRUE

dn: @readers@
objectClass: groupOfNames
cn: readers
member: @admin_dn@
";

/// A plain connection to `url`, its driver spawned.
pub async fn connect(url: &str) -> Result<Ldap, String> {
    let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(5));
    let (conn, ldap) = LdapConnAsync::with_settings(settings, url).await.map_err(|e| e.to_string())?;
    ldap3::drive!(conn);
    Ok(ldap)
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
