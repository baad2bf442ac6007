//! The Postgres fast path of a usage batch: the writer's [tuples](crate::tuple) streamed
//! into `COPY usage (...) FROM STDIN (FORMAT binary)` as they are.
//!
//! Against the `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT` of column arrays, `COPY`
//! spares the server the arrays' decoding, the executor's per-row work and the
//! speculative insertion of `ON CONFLICT`, and spares the gateway any per-row work at
//! write time: the rows were encoded when their requests settled. `COPY` has no
//! `ON CONFLICT`, so a batch that repeats a stored request id fails as a whole with a
//! unique violation; the store then writes that batch the idempotent way (see
//! `PostgresStore::insert_usage_tuples`).
//!
//! The stream (PostgreSQL docs, "COPY", binary format): the 11-byte signature, a
//! 32-bit flags field and a 32-bit header-extension length, the tuples, and a 16-bit -1.

use std::sync::OnceLock;

use crate::tuple::COLUMNS;

/// The statement, its columns in the tuples' field order.
pub(super) fn statement() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "COPY usage ({}) FROM STDIN (FORMAT binary)",
            COLUMNS.join(", ")
        )
    })
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The SQLSTATE of a unique violation: a request id already stored.
pub(super) const UNIQUE_VIOLATION: &str = "23505";

/// The stream's header.
pub(super) fn header() -> [u8; 19] {
    let mut h = [0u8; 19];
    h[..11].copy_from_slice(SIGNATURE);
    // Flags 0 (no OIDs) and no header extension: eight zero bytes.
    h
}

/// The stream's trailer.
pub(super) const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_names_every_column_in_tuple_order() {
        let sql = statement();
        assert!(sql.starts_with("COPY usage (request_id, key_id, requested_model, item,"));
        assert!(sql.ends_with("ttft_ms, started_at) FROM STDIN (FORMAT binary)"));
    }

    #[test]
    fn header_and_trailer_are_the_documented_bytes() {
        let h = header();
        assert_eq!(&h[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&h[11..], &[0u8; 8]);
        assert_eq!(TRAILER, [0xff, 0xff]);
    }
}
