//! The SPICE ticket: the password plus a NUL byte, encrypted with RSA-OAEP(SHA-1)
//! against the public key the server sent in its link reply.

use crate::secret::Secret;
use rsa::pkcs8::DecodePublicKey;
use rsa::PublicKey;

/// spice-server refuses passwords of 60 bytes or more (SPICE_MAX_PASSWORD_LENGTH
/// includes the NUL).
pub const MAX_PASSWORD_LEN: usize = 59;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketError {
    /// The server's key is not a DER SubjectPublicKeyInfo RSA key.
    BadServerKey,
    /// The password is longer than spice-server accepts (its length, never its text).
    PasswordTooLong(usize),
    /// RSA-OAEP failed (message too long for the key).
    Encrypt,
}

impl std::fmt::Display for TicketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TicketError::BadServerKey => {
                f.write_str("server sent an unusable RSA public key in its link reply")
            }
            TicketError::PasswordTooLong(n) => write!(
                f,
                "password is {n} bytes; spice-server accepts at most {MAX_PASSWORD_LEN}"
            ),
            TicketError::Encrypt => {
                f.write_str("could not encrypt the ticket with the server's key")
            }
        }
    }
}

impl std::error::Error for TicketError {}

/// Encrypts the ticket. No password still sends the encrypted empty string.
pub fn encrypt(spki_der: &[u8], password: Option<&Secret>) -> Result<Vec<u8>, TicketError> {
    let pw = password.map(Secret::expose).unwrap_or("");
    if pw.len() > MAX_PASSWORD_LEN {
        return Err(TicketError::PasswordTooLong(pw.len()));
    }
    let key = PublicKey::from_public_key_der(spki_der).map_err(|_| TicketError::BadServerKey)?;
    let mut plain = Vec::with_capacity(pw.len() + 1);
    plain.extend_from_slice(pw.as_bytes());
    plain.push(0);
    let out = key
        .oaep_encrypt::<sha1::Sha1>(&plain)
        .map_err(|_| TicketError::Encrypt);
    // Best effort: do not leave the plaintext lying around in freed memory.
    plain.iter_mut().for_each(|b| *b = 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePublicKey;
    use rsa::PrivateKey;

    #[test]
    fn server_can_decrypt_the_ticket() {
        let mut rng = rand::rng();
        let sk = PrivateKey::new(&mut rng, 1024).unwrap();
        let der = sk.to_public_key().to_public_key_der().unwrap();
        assert_eq!(der.as_bytes().len(), 162, "SPICE sends a 162-byte SPKI");
        let ct = encrypt(der.as_bytes(), Some(&Secret::new("s3cret"))).unwrap();
        assert_eq!(ct.len(), 128);
        let pt = sk.oaep_decrypt::<sha1::Sha1>(&ct).unwrap();
        assert_eq!(pt, b"s3cret\0");
        let empty = encrypt(der.as_bytes(), None).unwrap();
        assert_eq!(sk.oaep_decrypt::<sha1::Sha1>(&empty).unwrap(), b"\0");
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert_eq!(encrypt(&[0x30; 162], None), Err(TicketError::BadServerKey));
        let long = Secret::new("x".repeat(60));
        assert_eq!(
            encrypt(&[0; 1], Some(&long)),
            Err(TicketError::PasswordTooLong(60))
        );
        assert!(!TicketError::PasswordTooLong(60).to_string().contains("xxx"));
    }
}
