//! Integration tests live in this package's `tests` targets; the library is empty.
