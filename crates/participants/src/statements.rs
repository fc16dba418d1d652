//! Which SQL statements the database coordinator's API runs (issue 19: it ran a `CREATE TABLE`
//! sent by anyone). Each entry of a branch is one statement, read only far enough to know its
//! kind; anything that is not plainly one data statement — or one schema statement where the
//! database's configuration allows them — is refused before any database sees it.
//!
//! This is a door, not a parser. It refuses more than it must (a `;` inside a string literal,
//! for one) rather than less, and it does not replace the database's own privileges: give the
//! coordinator a database user that may do no more than the application needs.

/// What a statement does, as far as the door cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads and writes rows: `SELECT`, `INSERT`, `UPDATE`, `DELETE`, `WITH`, …
    Data,
    /// Changes the schema: `CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `RENAME`, `COMMENT`.
    Schema,
}

/// Longest statement the API takes.
pub const MAX_STATEMENT_BYTES: usize = 64 << 10;

const DATA: [&str; 9] =
    ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "REPLACE", "MERGE", "TABLE"];
const SCHEMA: [&str; 6] = ["CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME", "COMMENT"];

/// The kind of `sql`, or why it is refused: more than one statement, a transaction-control or
/// session statement (the coordinator runs the transaction; a `COMMIT` inside a branch would
/// end it behind the coordinator's back), a server-side program (`CALL`, `DO`, `COPY`), or a
/// MariaDB executable comment.
pub fn classify(sql: &str) -> Result<Kind, String> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(format!("a statement of {} bytes, over {MAX_STATEMENT_BYTES}", sql.len()));
    }
    if sql.contains("/*!") || sql.contains("/*M!") {
        return Err("an executable comment (`/*!`) is not run".into());
    }
    let body = sql.trim_end();
    let body = body.strip_suffix(';').unwrap_or(body);
    if body.contains(';') {
        return Err(
            "one statement per entry: `;` may only end it (not even inside a literal)".into()
        );
    }
    let word = first_word(body).ok_or("an empty statement")?;
    let upper = word.to_ascii_uppercase();
    if DATA.contains(&upper.as_str()) {
        Ok(Kind::Data)
    } else if SCHEMA.contains(&upper.as_str()) {
        Ok(Kind::Schema)
    } else {
        Err(format!(
            "`{upper}` statements are not run: only data statements ({}) and, where the database allows, schema statements ({})",
            DATA.join(", "),
            SCHEMA.join(", ")
        ))
    }
}

/// The first word after whitespace and comments (`-- …`, `# …`, `/* … */`, and parentheses
/// around a query).
fn first_word(mut text: &str) -> Option<&str> {
    loop {
        text = text.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(rest) = text.strip_prefix("--").or_else(|| text.strip_prefix('#')) {
            text = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = text.strip_prefix("/*") {
            text = rest.split_once("*/")?.1;
        } else {
            break;
        }
    }
    let end = text.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_schema_statements_are_told_apart_and_everything_else_refused() {
        for sql in [
            "SELECT 1",
            "  insert into t values (1);",
            "-- a note\nUPDATE t SET x = 1",
            "/* why */ DELETE FROM t",
            "(SELECT 1) UNION (SELECT 2)",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        ] {
            assert_eq!(classify(sql), Ok(Kind::Data), "{sql}");
        }
        for sql in
            ["CREATE TABLE t (x int)", "drop table t", "TRUNCATE t", "ALTER TABLE t ADD y int"]
        {
            assert_eq!(classify(sql), Ok(Kind::Schema), "{sql}");
        }
        for sql in [
            "COMMIT",
            "ROLLBACK",
            "PREPARE TRANSACTION 'x'",
            "XA END 'x'",
            "BEGIN",
            "SET ROLE postgres",
            "GRANT ALL ON t TO public",
            "COPY t FROM PROGRAM 'rm -rf /'",
            "CALL p()",
            "DO $$ BEGIN END $$",
            "LOCK TABLE t",
            "INSERT INTO t VALUES (1); DROP TABLE t",
            "SELECT ';'",
            "SELECT 1 /*!, (DROP TABLE t) */",
            "",
            "   ;",
            "-- only a comment",
            "/* unterminated",
        ] {
            assert!(classify(sql).is_err(), "{sql:?} was let through");
        }
        assert!(classify(&"SELECT 1 ".repeat(10_000)).unwrap_err().contains("over"));
    }
}
