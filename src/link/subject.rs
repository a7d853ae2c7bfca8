//! `host-subject`: the certificate subject a .vv asks for instead of a host name.
//!
//! Parsed and compared the way spice-common does it (remote-viewer's behaviour):
//! the string is a comma-separated list of `KEY=VALUE`; a backslash escapes only a
//! comma or a backslash (anything else after `\` is an error); spaces before a key
//! are skipped, every other space is kept; a trailing comma is allowed; an empty
//! value is an error. Keys are OpenSSL attribute names, case-sensitive (`CN`,
//! `commonName`, `O`, ...) or a dotted OID. Each pair is one RDN.
//!
//! Matching follows OpenSSL's `X509_NAME_cmp` on canonical encodings: same number
//! of attributes, same order, same attribute types, and values equal after
//! canonicalisation (leading/trailing whitespace dropped, inner whitespace runs
//! folded to one space, ASCII lower-cased). A multi-valued RDN in the certificate
//! never matches (a host-subject can only express single-valued ones).

use std::fmt;

/// OpenSSL's names for the usual DN attributes: (short name, long name, OID).
const ATTRIBUTES: &[(&str, &str, &str)] = &[
    ("CN", "commonName", "2.5.4.3"),
    ("SN", "surname", "2.5.4.4"),
    ("serialNumber", "serialNumber", "2.5.4.5"),
    ("C", "countryName", "2.5.4.6"),
    ("L", "localityName", "2.5.4.7"),
    ("ST", "stateOrProvinceName", "2.5.4.8"),
    ("street", "streetAddress", "2.5.4.9"),
    ("O", "organizationName", "2.5.4.10"),
    ("OU", "organizationalUnitName", "2.5.4.11"),
    ("title", "title", "2.5.4.12"),
    ("description", "description", "2.5.4.13"),
    ("businessCategory", "businessCategory", "2.5.4.15"),
    ("postalCode", "postalCode", "2.5.4.17"),
    ("name", "name", "2.5.4.41"),
    ("GN", "givenName", "2.5.4.42"),
    ("initials", "initials", "2.5.4.43"),
    ("generationQualifier", "generationQualifier", "2.5.4.44"),
    ("dnQualifier", "dnQualifier", "2.5.4.46"),
    ("pseudonym", "pseudonym", "2.5.4.65"),
    (
        "organizationIdentifier",
        "organizationIdentifier",
        "2.5.4.97",
    ),
    ("UID", "userId", "0.9.2342.19200300.100.1.1"),
    ("DC", "domainComponent", "0.9.2342.19200300.100.1.25"),
    ("emailAddress", "emailAddress", "1.2.840.113549.1.9.1"),
    (
        "unstructuredName",
        "unstructuredName",
        "1.2.840.113549.1.9.2",
    ),
];

/// Why a host-subject string cannot be used (remote-viewer would refuse it too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSyntaxError(pub String);

impl fmt::Display for SubjectSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One attribute: its OID (dotted) and its canonical value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attr {
    oid: String,
    canon: String,
}

/// A parsed `host-subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSubject {
    attrs: Vec<Attr>,
    text: String,
}

impl HostSubject {
    /// Parses the .vv value.
    pub fn parse(text: &str) -> Result<HostSubject, SubjectSyntaxError> {
        let pairs = split_pairs(text)?;
        if pairs.is_empty() {
            return Err(SubjectSyntaxError("host-subject is empty".into()));
        }
        let mut attrs = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let oid = oid_for_key(&key).ok_or_else(|| {
                SubjectSyntaxError(format!(
                    "unknown attribute `{key}` in host-subject (names are case-sensitive, as in OpenSSL: CN, O, OU, C, ST, L, ... or a dotted OID)"
                ))
            })?;
            attrs.push(Attr {
                oid,
                canon: canonical(&value),
            });
        }
        Ok(HostSubject {
            attrs,
            text: text.to_string(),
        })
    }

    /// The string as written in the .vv.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `cert` has exactly these attributes, in this order.
    pub fn matches(&self, cert: &CertSubject) -> bool {
        if cert.multi_valued || cert.attrs.len() != self.attrs.len() {
            return false;
        }
        self.attrs
            .iter()
            .zip(&cert.attrs)
            .all(|(want, got)| match got {
                Some(got) => got == want,
                None => false,
            })
    }
}

/// A certificate's subject, ready to compare and to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSubject {
    /// `None` for a value that is not a character string (never matches).
    attrs: Vec<Option<Attr>>,
    multi_valued: bool,
    /// `O=spice-lab,CN=spice-lab-server`: host-subject syntax, so an operator can
    /// paste it into the .vv.
    display: String,
}

impl CertSubject {
    /// Reads the subject of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertSubject, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("cannot parse the server certificate: {e}"))?;
        let mut attrs = Vec::new();
        let mut multi_valued = false;
        let mut rdn_texts = Vec::new();
        for rdn in cert.subject().iter_rdn() {
            let mut parts = Vec::new();
            let mut n = 0;
            for atv in rdn.iter() {
                n += 1;
                let oid = atv.attr_type().to_id_string();
                let value = decode_string(atv.attr_value().tag(), atv.attr_value().data);
                let key = key_for_oid(&oid);
                let shown = match &value {
                    Some(v) => escape(v),
                    None => "#<binary>".to_string(),
                };
                parts.push(format!("{key}={shown}"));
                attrs.push(value.map(|v| Attr {
                    oid,
                    canon: canonical(&v),
                }));
            }
            multi_valued |= n > 1;
            rdn_texts.push(parts.join("+"));
        }
        Ok(CertSubject {
            attrs,
            multi_valued,
            display: rdn_texts.join(","),
        })
    }
}

impl fmt::Display for CertSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// Splits `KEY=VALUE,...` with spice-common's escaping and whitespace rules.
fn split_pairs(text: &str) -> Result<Vec<(String, String)>, SubjectSyntaxError> {
    enum State {
        Key,
        Value,
    }
    let mut out = Vec::new();
    let mut key = String::new();
    let mut value = String::new();
    let mut state = State::Key;
    let mut chars = text.chars();
    loop {
        let mut c = chars.next();
        let mut escaped = false;
        if c == Some('\\') {
            c = chars.next();
            if !matches!(c, Some('\\') | Some(',')) {
                return Err(SubjectSyntaxError(
                    "host-subject: a backslash may only escape `,` or `\\`".into(),
                ));
            }
            escaped = true;
        }
        match state {
            State::Key => match c {
                Some(' ') if key.is_empty() && !escaped => {}
                None if key.is_empty() => return Ok(out),
                None => {
                    return Err(SubjectSyntaxError(format!(
                        "host-subject: `{key}` has no `=VALUE`"
                    )))
                }
                Some(',') if !escaped => {
                    return Err(SubjectSyntaxError(
                        "host-subject: an entry has no `KEY=VALUE`".into(),
                    ))
                }
                Some('=') if !escaped => state = State::Value,
                Some(ch) => key.push(ch),
            },
            State::Value => {
                let end = match c {
                    None => true,
                    Some(',') => !escaped,
                    Some(_) => false,
                };
                if end {
                    if value.is_empty() {
                        return Err(SubjectSyntaxError(format!(
                            "host-subject: `{key}=` has an empty value"
                        )));
                    }
                    out.push((std::mem::take(&mut key), std::mem::take(&mut value)));
                    if c.is_none() {
                        return Ok(out);
                    }
                    state = State::Key;
                } else if let Some(ch) = c {
                    value.push(ch);
                }
            }
        }
    }
}

fn oid_for_key(key: &str) -> Option<String> {
    if let Some((_, _, oid)) = ATTRIBUTES.iter().find(|(s, l, _)| *s == key || *l == key) {
        return Some((*oid).to_string());
    }
    let dotted = key.split('.').count() >= 2
        && key
            .split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
    dotted.then(|| key.to_string())
}

fn key_for_oid(oid: &str) -> String {
    ATTRIBUTES
        .iter()
        .find(|(_, _, o)| *o == oid)
        .map(|(s, _, _)| (*s).to_string())
        .unwrap_or_else(|| oid.to_string())
}

/// The host-subject escaping, so a printed subject can be pasted back.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace(',', "\\,")
}

/// OpenSSL's canonical form: trim whitespace, fold inner runs to one space,
/// lower-case ASCII.
fn canonical(v: &str) -> String {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r');
    let mut out = String::with_capacity(v.len());
    let mut pending_space = false;
    for c in v.trim_matches(is_space).chars() {
        if is_space(c) {
            pending_space = true;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Decodes the DirectoryString-like types to text; `None` for anything else.
fn decode_string(tag: x509_parser::der_parser::asn1_rs::Tag, data: &[u8]) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    match tag {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => std::str::from_utf8(data).ok().map(str::to_string),
        // OpenSSL reads T61String as Latin-1.
        Tag::T61String => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => {
            if !data.len().is_multiple_of(4) {
                return None;
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(oid: &str, v: &str) -> Option<Attr> {
        Some(Attr {
            oid: oid.into(),
            canon: canonical(v),
        })
    }

    fn cert(attrs: Vec<Option<Attr>>) -> CertSubject {
        CertSubject {
            attrs,
            multi_valued: false,
            display: String::new(),
        }
    }

    fn lab_cert() -> CertSubject {
        cert(vec![
            attr("2.5.4.10", "spice-lab"),
            attr("2.5.4.3", "spice-lab-server"),
        ])
    }

    #[test]
    fn parses_plain_pairs() {
        let s = HostSubject::parse("O=spice-lab,CN=spice-lab-server").unwrap();
        assert!(s.matches(&lab_cert()));
        assert_eq!(s.as_str(), "O=spice-lab,CN=spice-lab-server");
    }

    #[test]
    fn long_names_and_oids_are_the_same_attribute() {
        for text in [
            "organizationName=spice-lab,commonName=spice-lab-server",
            "2.5.4.10=spice-lab,2.5.4.3=spice-lab-server",
        ] {
            assert!(
                HostSubject::parse(text).unwrap().matches(&lab_cert()),
                "{text}"
            );
        }
    }

    #[test]
    fn order_matters() {
        let s = HostSubject::parse("CN=spice-lab-server,O=spice-lab").unwrap();
        assert!(!s.matches(&lab_cert()));
    }

    #[test]
    fn count_matters() {
        let s = HostSubject::parse("CN=spice-lab-server").unwrap();
        assert!(!s.matches(&lab_cert()));
        let s = HostSubject::parse("C=DE,O=spice-lab,CN=spice-lab-server").unwrap();
        assert!(!s.matches(&lab_cert()));
    }

    #[test]
    fn spaces_before_keys_are_skipped_and_values_canonicalised() {
        // "O= spice-lab" and "CN=Spice-Lab   Server" compare canonically.
        let c = cert(vec![
            attr("2.5.4.10", "spice-lab"),
            attr("2.5.4.3", "spice-lab  server"),
        ]);
        let s = HostSubject::parse("  O= spice-lab ,  CN=SPICE-LAB\tserver").unwrap();
        assert!(s.matches(&c));
    }

    #[test]
    fn space_between_key_and_equals_is_part_of_the_key() {
        // spice-common keeps it: "O " is not an attribute name.
        let e = HostSubject::parse("O =spice-lab").unwrap_err();
        assert!(e.0.contains("unknown attribute `O `"), "{e}");
    }

    #[test]
    fn escaped_commas_and_backslashes() {
        let c = cert(vec![
            attr("2.5.4.10", "Example, Inc."),
            attr("2.5.4.3", "a\\b"),
        ]);
        let s = HostSubject::parse(r"O=Example\, Inc.,CN=a\\b").unwrap();
        assert!(s.matches(&c));
        // Unescaped, the comma splits: " Inc." has no "=".
        assert!(HostSubject::parse("O=Example, Inc.,CN=x").is_err());
    }

    #[test]
    fn equals_sign_inside_a_value_is_kept() {
        let c = cert(vec![attr("2.5.4.3", "a=b")]);
        assert!(HostSubject::parse("CN=a=b").unwrap().matches(&c));
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "",
            "   ",
            "CN",
            "CN=",
            "O=x,,CN=y",
            r"CN=a\b",
            "CN=x\\",
            "cn=x",
            "1.2.x=y",
            ",CN=x",
        ] {
            assert!(HostSubject::parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn trailing_comma_is_allowed() {
        let s = HostSubject::parse("O=spice-lab,CN=spice-lab-server, ").unwrap();
        assert!(s.matches(&lab_cert()));
    }

    #[test]
    fn mismatching_value() {
        let s = HostSubject::parse("O=spice-lab,CN=other").unwrap();
        assert!(!s.matches(&lab_cert()));
    }

    #[test]
    fn non_string_values_and_multi_valued_rdns_never_match() {
        let s = HostSubject::parse("O=spice-lab,CN=spice-lab-server").unwrap();
        let c = cert(vec![attr("2.5.4.10", "spice-lab"), None]);
        assert!(!s.matches(&c));
        let mut c = lab_cert();
        c.multi_valued = true;
        assert!(!s.matches(&c));
    }

    #[test]
    fn canonical_form() {
        assert_eq!(canonical("  A \t B\r\nC  "), "a b c");
        assert_eq!(canonical("ÄBC"), "Äbc");
    }

    #[test]
    fn string_types_decode() {
        use x509_parser::der_parser::asn1_rs::Tag;
        assert_eq!(
            decode_string(Tag::BmpString, &[0, b'h', 0, b'i']).as_deref(),
            Some("hi")
        );
        assert_eq!(
            decode_string(Tag::UniversalString, &[0, 0, 0, b'x']).as_deref(),
            Some("x")
        );
        assert_eq!(decode_string(Tag::T61String, &[0xe9]).as_deref(), Some("é"));
        assert_eq!(decode_string(Tag::Integer, &[1]), None);
        assert_eq!(decode_string(Tag::BmpString, &[0]), None);
    }
}
