//! What every `#[derive(Session)]` struct of the program declares: its stored keys, their
//! types, and which are flash or indexed. The derive submits one [`Registration`] per struct
//! (with `inventory`, before `main` runs); the layer reads them when it is built, to find two
//! structs storing one key with different types and to learn which keys are indexed.

use std::any::TypeId;
use std::collections::BTreeMap;

use crate::config::ConfigError;

/// One derived struct, as the derive registers it. Not public API.
#[doc(hidden)]
pub struct Registration {
    /// The struct's path, `module::Name`.
    pub name: &'static str,
    /// Its `#[session(namespace = "...")]`.
    pub namespace: Option<&'static str>,
    /// Its fields, in declaration order.
    pub fields: &'static [RegisteredField],
}

/// One field of a derived struct. Not public API.
#[doc(hidden)]
pub struct RegisteredField {
    /// The key it is stored under (after the namespace).
    pub key: &'static str,
    /// Its Rust type.
    pub type_id: fn() -> TypeId,
    /// Its Rust type's name, for messages.
    pub type_name: fn() -> &'static str,
    /// `#[session(flash)]`.
    pub flash: bool,
    /// `#[session(index)]`.
    pub index: bool,
}

inventory::collect!(Registration);

/// Every registered struct, in a stable order (by name).
fn registrations() -> Vec<&'static Registration> {
    let mut all: Vec<&'static Registration> = inventory::iter::<Registration>().collect();
    all.sort_by_key(|registration| registration.name);
    all
}

/// The stored keys of every `#[session(index)]` field in the program, sorted, once each.
pub(crate) fn indexed_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = registrations()
        .into_iter()
        .flat_map(|registration| registration.fields.iter())
        .filter(|field| field.index)
        .map(|field| field.key)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The first key that two structs store in different ways: with different Rust types, or as
/// a flash field in one and a plain field in the other. Sharing a key with the same type is
/// what un-namespaced structs are for (`Auth.user` and `Visit.user` are one value).
pub(crate) fn key_conflict() -> Option<ConfigError> {
    let mut seen: BTreeMap<&'static str, (&'static Registration, &'static RegisteredField)> =
        BTreeMap::new();
    for registration in registrations() {
        for field in registration.fields {
            let Some((first, first_field)) = seen.get(field.key) else {
                seen.insert(field.key, (registration, field));
                continue;
            };
            let same_type = (first_field.type_id)() == (field.type_id)();
            if !same_type || first_field.flash != field.flash {
                let describe = |registration: &Registration, field: &RegisteredField| {
                    format!(
                        "`{}` as {}`{}`",
                        registration.name,
                        if field.flash { "a flash " } else { "" },
                        (field.type_name)()
                    )
                };
                return Some(ConfigError::KeyTypeConflict {
                    key: field.key,
                    first: describe(first, first_field),
                    second: describe(registration, field),
                });
            }
        }
    }
    None
}
