//! The LDIF parser and renderer on the records roles write.

use super::*;
use chrono::Utc;

fn values(username: &str) -> Values<'_> {
    Values { username, password: Some("pw"), role: "ro", issued_at: Utc::now(), expires_at: Utc::now() }
}

const VAULT_CREATION: &str = "dn: cn={{.Username}},ou=people,dc=lessor,dc=test
objectClass: person
objectClass: top
cn: {{.Username}}
sn: {{.RoleName}}
userPassword: {{.Password}}
";

#[test]
fn a_vault_creation_ldif_adds_the_entry_with_the_hash() {
    let ldif = Ldif::parse(VAULT_CREATION, Schema::OpenLdap, Purpose::Creation).unwrap();
    assert!(ldif.needs_hash() && !ldif.needs_unicode_pwd());
    let ops =
        ldif.render(&values("v_ro_1"), &Secrets { hashed: Some("{SSHA512}xyz"), unicode_pwd: None }).unwrap();
    let [Op::Add { dn, attrs }] = ops.as_slice() else { panic!("{ops:?}") };
    assert_eq!(dn, "cn=v_ro_1,ou=people,dc=lessor,dc=test");
    let get = |n: &str| attrs.iter().find(|(a, _)| a == n.as_bytes()).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("objectClass").len(), 2);
    assert_eq!(get("userPassword"), HashSet::from([b"{SSHA512}xyz".to_vec()]));
    assert_eq!(get("cn"), HashSet::from([b"v_ro_1".to_vec()]));
    assert_eq!(ldif.entry_dn(&values("v_ro_1")).unwrap().unwrap(), *dn);
    let shown = format!("{ops:?} {:?}", Secrets { hashed: Some("{SSHA512}xyz"), unicode_pwd: None });
    assert!(!shown.contains("xyz") && shown.contains("add cn=v_ro_1"), "{shown}");
}

#[test]
fn records_folding_base64_and_changetypes() {
    let source = "version: 1

# the user
dn: cn={{name}},ou=people,
 dc=lessor,dc=test
changetype: add
objectClass: person
cn: {{name}}
sn:: c24=
description: {{.Username}} made at {{.IssueTime}}

dn: cn=readers,ou=groups,dc=lessor,dc=test
changetype: modify
add: member
member: cn={{name}},ou=people,dc=lessor,dc=test
-
replace: description
description: x
-
delete: seeAlso
";
    let ldif = Ldif::parse(source, Schema::OpenLdap, Purpose::Creation).unwrap();
    assert_eq!(ldif.len(), 2);
    let ops = ldif.render(&values("a,b"), &Secrets::default()).unwrap();
    assert_eq!(ops[0].dn(), "cn=a\\2cb,ou=people,dc=lessor,dc=test");
    let Op::Add { attrs, .. } = &ops[0] else { panic!() };
    assert!(attrs.iter().any(|(a, v)| a == b"sn" && v.contains(b"sn".as_slice())));
    // A plain value is not escaped; one holding a DN is.
    assert!(attrs
        .iter()
        .any(|(a, v)| a == b"description" && v.iter().any(|d| d.starts_with(b"a,b made at "))));
    let Op::Modify { mods, .. } = &ops[1] else { panic!() };
    assert_eq!(mods.len(), 3);
    match &mods[0] {
        Mod::Add(attr, set) => {
            assert_eq!(attr, b"member");
            assert!(set.contains(b"cn=a\\2cb,ou=people,dc=lessor,dc=test".as_slice()));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&mods[2], Mod::Delete(a, s) if a == b"seeAlso" && s.is_empty()));
    assert_eq!(ops[1].describe(), "modify cn=readers,ou=groups,dc=lessor,dc=test");
}

#[test]
fn ad_unicode_pwd_in_both_spellings() {
    let modify = "dn: CN={{.Username}},CN=Users,DC=corp,DC=example\nchangetype: modify\nreplace: unicodePwd\nunicodePwd: {{.Password}}\n-\n";
    // A modify alone adds no entry.
    let e = Ldif::parse(modify, Schema::Ad, Purpose::Creation).unwrap_err();
    assert!(e.contains("adds no entry"), "{e}");
    let add = "dn: CN={{.Username}},CN=Users,DC=corp,DC=example\nobjectClass: user\nsAMAccountName: {{.Username}}\n";
    let quoted: Vec<u8> = "\"pw\"".encode_utf16().flat_map(u16::to_le_bytes).collect();
    for password_line in
        ["unicodePwd: {{.Password}}", r#"unicodePwd::{{ printf "\"%s\"" .Password | utf16le | base64 }}"#]
    {
        let source = format!(
                "{add}\ndn: CN={{{{.Username}}}},CN=Users,DC=corp,DC=example\nchangetype: modify\nreplace: unicodePwd\n{password_line}\n-\n"
            );
        let ldif =
            Ldif::parse(&source, Schema::Ad, Purpose::Creation).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(ldif.needs_unicode_pwd(), !password_line.contains("printf"));
        let secrets = Secrets { hashed: None, unicode_pwd: Some(&quoted) };
        let ops = ldif.render(&values("u"), &secrets).unwrap();
        let Op::Modify { mods, .. } = &ops[1] else { panic!("{ops:?}") };
        assert!(
            matches!(&mods[0], Mod::Replace(a, s) if a == b"unicodePwd" && s.contains(&quoted)),
            "{password_line}: {mods:?}"
        );
    }
}

#[test]
fn mistakes_are_refused_with_the_line() {
    for (purpose, source, wanted) in [
            (Purpose::Creation, "objectClass: x\n", "starts with `objectClass:`, not `dn:`"),
            (Purpose::Creation, "dn: cn={{.Username}},dc=x\nchangetype: modrdn\nnewrdn: cn=y\n", "modrdn is not supported"),
            (Purpose::Creation, "dn: cn={{.Username}},dc=x\nchangetype: frob\n", "unknown changetype"),
            (Purpose::Creation, "dn: cn={{.Username}},dc=x\nobjectClass: person\nuserPassword:: {{.Password | base64}}\n", "alone"),
            (Purpose::Creation, "dn: cn={{.Username}},dc=x\nobjectClass: person\ndescription: {{.Password}}\n", "stored there in clear"),
            (Purpose::Creation, "dn: cn={{.Username}},dc=x\nobjectClass: person\nsn:: !!!\n", "line 3: the `sn::` value is not valid base64"),
            (Purpose::Creation, "dn: cn={{.Username}},dc=x\njpegPhoto:< file:///etc/passwd\n", "from a URL"),
            (Purpose::Creation, "dn: cn=fixed,dc=x\nobjectClass: person\n", "never uses {{.Username}}"),
            (Purpose::Creation, "dn: cn={{.Usernme}},dc=x\nobjectClass: person\n", "line 1: `{{.Usernme}}`"),
            (Purpose::Deletion, "dn: cn={{.Username}},dc=x\nchangetype: modify\nreplace: userPassword\nuserPassword: {{.Password}}\n", "only known to creation_ldif"),
            (Purpose::Deletion, "dn: cn={{.Username}},dc=x\nchangetype: delete\ncn: y\n", "no further lines"),
            (Purpose::Deletion, "dn: cn={{.Username}},dc=x\nchangetype: modify\nadd: member\ncn: y\n", "inside the change of `member`"),
            (Purpose::Deletion, "# only a comment\n\n", "holds no LDIF record"),
        ] {
            let e = Ldif::parse(source, Schema::OpenLdap, purpose).unwrap_err();
            assert!(e.contains(wanted), "{source:?}: {e}");
        }
}

#[test]
fn dns_are_checked() {
    assert!(check_dn("cn=a\\,b+uid=c,ou=people,dc=x").is_ok());
    assert!(check_dn("2.5.4.3=a,dc=x").is_ok());
    for bad in ["", "cn", "cn=,dc=x", "c n=a", "cn=a\\"] {
        assert!(check_dn(bad).is_err(), "{bad}");
    }
    let ldif =
        Ldif::parse("dn: {{.Username}}\nchangetype: delete\n", Schema::OpenLdap, Purpose::Deletion).unwrap();
    let e = ldif.render(&values("v_x"), &Secrets::default()).unwrap_err();
    assert!(e.contains("not type=value"), "{e}");
}
