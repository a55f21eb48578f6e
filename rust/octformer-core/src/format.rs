//! (placeholder: filled in by the serialization work, issue 3)
