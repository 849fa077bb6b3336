//! SPIFFE IDs and policy principals from untrusted text (certificate SANs, CSRs, policies).
//!
//! Never panics; whatever parses formats back to exactly the input and re-parses to the same
//! identity, in both the `spiffe://` and the principal form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::identity::Identity;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(id) = s.parse::<Identity>() {
        let formatted = id.to_string();
        assert_eq!(
            formatted, s,
            "an accepted identity formats back to its input"
        );
        assert_eq!(formatted.parse::<Identity>().as_ref(), Ok(&id));
        assert_eq!(Identity::from_principal(&id.principal()).as_ref(), Ok(&id));
        assert_eq!(
            Identity::new(id.trust_domain(), id.namespace(), id.service_account()).as_ref(),
            Ok(&id),
            "building from the parts accepts what parsing accepted"
        );
    }

    if let Ok(id) = Identity::from_principal(s) {
        assert_eq!(
            id.principal(),
            s,
            "an accepted principal formats back to its input"
        );
        assert_eq!(id.to_string().parse::<Identity>().as_ref(), Ok(&id));
    }
});
