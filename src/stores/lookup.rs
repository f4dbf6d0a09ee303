//! A lookup of the request path written once: one statement with placeholders (`$1`..) and one
//! typed list of its values, which [`Db::lookup`](super::db::Db::lookup) either binds (a named
//! statement on the gateway's own sessions) or writes into the statement's text
//! ([`Lookup::render`], one simple query behind a pooler; the values quoted by
//! [`super::sql_text`]). Both forms call the same function with the same values, so they answer
//! alike (`tests/api/round_trips.rs` holds it on a real server). The audit writer's INSERT of
//! fresh rows binds its columns as arrays the same way (`stores/audit/mod.rs`, `Columns`).

use super::sql_text::{self, Unquotable};

/// A value of a [`Lookup`], of one of the SQL types the lookups take.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    /// `text`.
    Text(&'a str),
    /// `integer`.
    Integer(i32),
    /// `boolean`.
    Boolean(bool),
    /// `text[]`.
    Texts(&'a [&'a str]),
    /// `text[]`, or `NULL`.
    OptTexts(Option<&'a [String]>),
    /// `text[]` whose elements may be `NULL` (a column of rows, for `unnest`).
    NullableTexts(&'a [Option<&'a str>]),
    /// `timestamptz[]`.
    Timestamps(&'a [chrono::DateTime<chrono::Utc>]),
    /// `bigint[]`.
    BigInts(&'a [i64]),
}

/// A statement whose `$n` is `values[n - 1]` ([`Lookup::arguments`] binds them).
#[derive(Clone, Copy, Debug)]
pub struct Lookup<'a> {
    pub sql: &'static str,
    pub values: &'a [Value<'a>],
}

impl<'a> Lookup<'a> {
    /// The values to bind, in order, encoded into one buffer sized for them first (one
    /// allocation; [`sqlx::query_with`] takes it as it is). A value sqlx cannot encode (a text
    /// over 2 GiB) is an error here, before anything is sent.
    pub fn arguments(&self) -> Result<sqlx::postgres::PgArguments, sqlx::Error> {
        use sqlx::Arguments;
        let mut args = sqlx::postgres::PgArguments::default();
        args.reserve(self.values.len(), self.values.iter().map(binary_size).sum());
        for (n, value) in self.values.iter().enumerate() {
            match *value {
                Value::Text(s) => args.add(s),
                Value::Integer(i) => args.add(i),
                Value::Boolean(b) => args.add(b),
                Value::Texts(v) => args.add(v),
                Value::OptTexts(v) => args.add(v),
                Value::NullableTexts(v) => args.add(v),
                Value::Timestamps(v) => args.add(v),
                Value::BigInts(v) => args.add(v),
            }
            .map_err(|e| {
                sqlx::Error::Encode(format!("encoding argument ${} failed: {e}", n + 1).into())
            })?;
        }
        Ok(args)
    }

    /// The statement with each `$n` replaced by its value written as a constant of its type.
    /// A placeholder without a value is left as it is: the server then refuses the statement
    /// ("there is no parameter $n"), never runs it with something else.
    pub fn render(&self) -> Result<String, Unquotable> {
        let sql = self.sql;
        let mut out =
            String::with_capacity(sql.len() + self.values.iter().map(room).sum::<usize>());
        let mut start = 0;
        for at in memchr::memchr_iter(b'$', sql.as_bytes()) {
            let digits = sql[at + 1..].bytes().take_while(u8::is_ascii_digit).count();
            let value = sql[at + 1..at + 1 + digits]
                .parse::<usize>()
                .ok()
                .and_then(|n| self.values.get(n.checked_sub(1)?));
            let Some(value) = value else { continue };
            out.push_str(&sql[start..at]);
            push_value(&mut out, value)?;
            start = at + 1 + digits;
        }
        out.push_str(&sql[start..]);
        Ok(out)
    }
}

/// The bytes `value` takes bound (PostgreSQL's binary format: a length before each value and
/// each array element, an array's 20-byte header).
fn binary_size(value: &Value<'_>) -> usize {
    fn texts(v: &[impl AsRef<str>]) -> usize {
        24 + v.iter().map(|s| s.as_ref().len() + 4).sum::<usize>()
    }
    match *value {
        Value::Text(s) => 4 + s.len(),
        Value::Integer(_) => 8,
        Value::Boolean(_) => 5,
        Value::Texts(v) => texts(v),
        Value::OptTexts(v) => v.map_or(4, texts),
        Value::NullableTexts(v) => {
            24 + v
                .iter()
                .map(|s| s.map_or(4, |s| s.len() + 4))
                .sum::<usize>()
        }
        Value::Timestamps(v) => 24 + v.len() * 12,
        Value::BigInts(v) => 24 + v.len() * 12,
    }
}

/// About the bytes `value` takes written in (a text's quotes and prefix, an array's brackets and
/// cast), so that the statement is written into one allocation.
fn room(value: &Value<'_>) -> usize {
    match *value {
        Value::Text(s) => s.len() + 3,
        Value::Integer(_) | Value::Boolean(_) => 16,
        Value::Texts(v) => 16 + v.iter().map(|s| s.len() + 4).sum::<usize>(),
        Value::OptTexts(v) => 16 + v.map_or(0, |v| v.iter().map(|s| s.len() + 4).sum()),
        Value::NullableTexts(v) => {
            16 + v
                .iter()
                .map(|s| s.map_or(5, |s| s.len() + 4))
                .sum::<usize>()
        }
        Value::Timestamps(v) => 24 + v.len() * 34,
        Value::BigInts(v) => 16 + v.len() * 22,
    }
}

/// Appends `value` as a constant of its type.
fn push_value(out: &mut String, value: &Value<'_>) -> Result<(), Unquotable> {
    match *value {
        Value::Text(s) => sql_text::push_text(out, s),
        Value::Integer(i) => {
            out.push_str(&sql_text::integer(i64::from(i)));
            Ok(())
        }
        Value::Boolean(b) => {
            out.push_str(sql_text::boolean(b));
            Ok(())
        }
        Value::Texts(v) => sql_text::push_text_array(out, v),
        Value::OptTexts(None) => {
            out.push_str("NULL::text[]");
            Ok(())
        }
        Value::OptTexts(Some(v)) => sql_text::push_text_array(out, v),
        Value::NullableTexts(v) => sql_text::push_opt_text_array(out, v),
        Value::Timestamps(v) => sql_text::push_array(out, v, "timestamptz", |out, at| {
            sql_text::push_timestamp(out, at);
            Ok(())
        }),
        Value::BigInts(v) => sql_text::push_array(out, v, "int8", |out, i| {
            out.push_str(&sql_text::integer(*i));
            Ok(())
        }),
    }
}

/// What each transaction of [`Db::connect_lookups`](super::db::Db::connect_lookups)' pool
/// runs after its settings, in the same message: it fails (P0001) on a server in recovery,
/// whichever server a transaction pooler gives it (a host list, an entry re-pointed and
/// reloaded).
pub(super) const STANDBY_GUARD: &str = "DO $standby$BEGIN IF pg_catalog.pg_is_in_recovery() THEN \
     RAISE EXCEPTION 'the server is a standby (in recovery), refused: its lag would let a cold lookup cache again what the change feed dropped; give the primary''s URL'; \
     END IF; END$standby$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_placeholder_is_its_value_written_as_a_constant() {
        let hashes = ["a'b", "c\\d"];
        let only = ["t1".to_string()];
        let lookup = Lookup {
            sql: "SELECT f($1, $2, $3, $4, $5, $10)",
            values: &[
                Value::Text("x"),
                Value::Integer(-5),
                Value::Boolean(true),
                Value::Texts(&hashes),
                Value::OptTexts(Some(&only)),
            ],
        };
        assert_eq!(
            lookup.render().unwrap(),
            "SELECT f(E'x', (-5), true, ARRAY[E'a''b',E'c\\\\d']::text[], ARRAY[E't1']::text[], $10)"
        );
        let at = [chrono::DateTime::from_timestamp(0, 1_500).unwrap()];
        let columns = Lookup {
            sql: "SELECT h($1, $2, $3)",
            values: &[
                Value::NullableTexts(&[Some("a"), None]),
                Value::Timestamps(&at),
                Value::BigInts(&[1, -2]),
            ],
        };
        assert_eq!(
            columns.render().unwrap(),
            "SELECT h(ARRAY[E'a',NULL]::text[], ARRAY['1970-01-01T00:00:00.000001500Z']::timestamptz[], ARRAY[(1),(-2)]::int8[])"
        );
        let none = Lookup {
            sql: "SELECT g($1, $2)",
            values: &[Value::OptTexts(None), Value::Texts(&[])],
        };
        assert_eq!(
            none.render().unwrap(),
            "SELECT g(NULL::text[], '{}'::text[])"
        );
    }

    #[test]
    fn a_nul_is_refused_before_any_text_is_built() {
        let lookup = Lookup {
            sql: "SELECT f($1)",
            values: &[Value::Text("a\0b")],
        };
        assert_eq!(lookup.render(), Err(Unquotable::Nul));
    }
}
