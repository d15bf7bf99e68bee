//! The enums kiln stores and shows as text (statuses, outcomes, event kinds, verdicts, compare
//! modes). Each variant's spelling is written once, in [`text_enum!`], which derives `as_str`,
//! its inverse `parse` and the list `ALL` from it. A variant left out of a hand-written `parse`
//! would read back from the database as corruption; here it cannot be left out.
//!
//! serde spells the same variants through `rename_all`; the test below holds the two to one
//! spelling. The API's error codes are declared with it too.

/// Declares an enum whose variants each have one text spelling (`Variant => "text"`), and
/// generates `ALL` (every variant, in order), `as_str` and `parse` from that one list. Attributes
/// on the enum and on its variants (derives, serde, docs, `#[default]`) are passed through.
macro_rules! text_enum {
    (
        $(#[$attr:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$variant_attr:meta])*
                $variant:ident => $text:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$attr])*
        $vis enum $name {
            $(
                $(#[$variant_attr])*
                $variant,
            )+
        }

        impl $name {
            /// Every variant, in the order declared.
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];

            /// How the variant is stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant [`Self::as_str`] spells as `s`.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::job::verdict::{CompareMode, Verdict};
    use crate::job::{EventKind, Outcome, Status};

    fn spelled_alike<T>(all: &[T], as_str: fn(T) -> &'static str, parse: fn(&str) -> Option<T>)
    where
        T: Copy + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned,
    {
        for &variant in all {
            let text = as_str(variant);
            assert_eq!(parse(text), Some(variant), "{text}");
            assert_eq!(serde_json::to_value(variant).expect("serialize"), text);
            let decoded: T = serde_json::from_value(text.into()).expect("deserialize");
            assert_eq!(decoded, variant, "{text}");
        }
    }

    #[test]
    fn serde_spells_every_variant_as_as_str_does_and_parse_reads_it_back() {
        spelled_alike(&Status::ALL, Status::as_str, Status::parse);
        spelled_alike(&Outcome::ALL, Outcome::as_str, Outcome::parse);
        spelled_alike(&Verdict::ALL, Verdict::as_str, Verdict::parse);
        spelled_alike(&CompareMode::ALL, CompareMode::as_str, CompareMode::parse);
    }

    #[test]
    fn event_kinds_read_back_as_what_they_are_stored_as() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("job.unheard_of"), None);
    }
}
