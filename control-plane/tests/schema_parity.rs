//! `migrations/postgres` and `migrations/sqlite` describe one catalog: the
//! same tables, columns, keys and indexes. This test migrates a fresh
//! database of each backend, reads the schema back from the database itself
//! (`information_schema` and `pg_catalog`; `sqlite_master` and the `pragma_*`
//! functions), normalises it to one vocabulary and compares. Where the two
//! schemas differ on purpose, the difference is listed in [`KNOWN_DIFFERENCES`]
//! with its reason, so that any other difference fails the test.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{PgPool, SqlitePool};
use support::{fresh_catalog, Backend};

/// Differences between the backends that are intended: `(fact, reason)`,
/// where the fact is a line of [`differences`]'s output. None today.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

/// A column type in the vocabulary both backends share: the storage class a
/// value has on SQLite. PostgreSQL's `UUID` is `bytes` (sqlx stores a UUID in
/// SQLite as its 16 bytes) and `TIMESTAMPTZ` is `text` (sqlx stores a
/// timestamp in SQLite as RFC 3339 text), so either backend's column maps to
/// the type its values are written as on the other.
fn postgres_type(data_type: &str) -> &'static str {
    match data_type {
        "text" | "character varying" => "text",
        "timestamp with time zone" => "text",
        "uuid" | "bytea" => "bytes",
        "smallint" | "integer" | "bigint" => "integer",
        "double precision" | "real" => "real",
        "boolean" => "boolean",
        other => panic!("PostgreSQL type {other:?} has no normalised name: add it here"),
    }
}

/// SQLite's declared types (as the migrations spell them) in the vocabulary
/// of [`postgres_type`].
fn sqlite_type(declared: &str) -> &'static str {
    match declared.to_ascii_uppercase().as_str() {
        "TEXT" => "text",
        "BLOB" => "bytes",
        "INTEGER" | "BIGINT" => "integer",
        "REAL" => "real",
        "BOOLEAN" => "boolean",
        other => panic!("SQLite type {other:?} has no normalised name: add it here"),
    }
}

/// What a column gets when an insert leaves it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColumnDefault {
    /// Nothing (NULL, or an error for a NOT NULL column).
    None,
    /// A constant (`DEFAULT ...`); its spelling differs between the dialects.
    Value,
    /// The next number of a sequence (`BIGSERIAL`; SQLite's `AUTOINCREMENT`).
    Generated,
}

/// One column, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Column {
    ty: &'static str,
    nullable: bool,
    default: ColumnDefault,
}

/// A foreign key: `columns` reference `table(references)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ForeignKey {
    columns: Vec<String>,
    table: String,
    references: Vec<String>,
    /// `NO ACTION`, `RESTRICT`, `CASCADE`, `SET NULL` or `SET DEFAULT`.
    on_delete: String,
}

/// An index that is not the implementation of a key or unique constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Index {
    columns: Vec<String>,
    unique: bool,
    partial: bool,
}

impl Index {
    fn new(columns: Vec<String>, unique: bool, partial: bool) -> Index {
        Index {
            columns,
            unique,
            partial,
        }
    }
}

/// One table, normalised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Table {
    columns: BTreeMap<String, Column>,
    primary_key: Vec<String>,
    foreign_keys: BTreeSet<ForeignKey>,
    unique: BTreeSet<Vec<String>>,
    indexes: BTreeMap<String, Index>,
}

/// A catalog schema: its tables by name (without the migration bookkeeping).
type Schema = BTreeMap<String, Table>;

/// The schema as lines of text, one fact each, so that two schemas compare
/// as two sets and a difference reads as the line that is missing.
fn facts(schema: &Schema) -> BTreeSet<String> {
    let mut facts = BTreeSet::new();
    for (name, table) in schema {
        facts.insert(format!("table {name}"));
        for (column, c) in &table.columns {
            let null = if c.nullable { "null" } else { "not null" };
            let default = match c.default {
                ColumnDefault::None => "",
                ColumnDefault::Value => " default",
                ColumnDefault::Generated => " generated",
            };
            facts.insert(format!("{name}.{column}: {} {null}{default}", c.ty));
        }
        facts.insert(format!(
            "{name}: primary key ({})",
            table.primary_key.join(", ")
        ));
        for key in &table.foreign_keys {
            facts.insert(format!(
                "{name}: foreign key ({}) references {}({}) on delete {}",
                key.columns.join(", "),
                key.table,
                key.references.join(", "),
                key.on_delete
            ));
        }
        for columns in &table.unique {
            facts.insert(format!("{name}: unique ({})", columns.join(", ")));
        }
        for (index, i) in &table.indexes {
            let unique = if i.unique { "unique " } else { "" };
            let partial = if i.partial { " where ..." } else { "" };
            facts.insert(format!(
                "{name}: {unique}index {index} ({}){partial}",
                i.columns.join(", ")
            ));
        }
    }
    facts
}

/// The facts of one schema that the other lacks, each prefixed with the side
/// that has it (`postgres only: ` or `sqlite only: `).
fn differences(postgres: &Schema, sqlite: &Schema) -> Vec<String> {
    let postgres = facts(postgres);
    let sqlite = facts(sqlite);
    let only_postgres = postgres
        .difference(&sqlite)
        .map(|fact| format!("postgres only: {fact}"));
    let only_sqlite = sqlite
        .difference(&postgres)
        .map(|fact| format!("sqlite only: {fact}"));
    only_postgres.chain(only_sqlite).collect()
}

fn columns(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn postgres_schema(pool: &PgPool) -> Schema {
    let mut schema = Schema::new();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
         AND table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    for (name,) in tables {
        schema.insert(name, Table::default());
    }

    let columns_sql = "SELECT table_name::text, column_name::text, data_type::text, \
         is_nullable::text = 'YES', column_default::text \
         FROM information_schema.columns WHERE table_schema = 'public' \
         AND table_name NOT LIKE '\\_sqlx%'";
    let rows: Vec<(String, String, String, bool, Option<String>)> = sqlx::query_as(columns_sql)
        .fetch_all(pool)
        .await
        .expect("columns");
    for (name, column, data_type, nullable, default) in rows {
        let table = schema.get_mut(&name).expect("a column of a listed table");
        let default = match default {
            None => ColumnDefault::None,
            Some(d) if d.starts_with("nextval(") => ColumnDefault::Generated,
            Some(_) => ColumnDefault::Value,
        };
        let ty = postgres_type(&data_type);
        table.columns.insert(
            column,
            Column {
                ty,
                nullable,
                default,
            },
        );
    }

    // Column lists in key order, as text: `a,b`.
    let constraints: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
        "SELECT c.conrelid::regclass::text, c.contype::text, \
           (SELECT string_agg(a.attname::text, ',' ORDER BY k.ord) \
              FROM unnest(c.conkey) WITH ORDINALITY AS k(num, ord) \
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num), \
           CASE WHEN c.contype = 'f' THEN c.confrelid::regclass::text ELSE '' END, \
           COALESCE((SELECT string_agg(a.attname::text, ',' ORDER BY k.ord) \
              FROM unnest(c.confkey) WITH ORDINALITY AS k(num, ord) \
              JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num), ''), \
           CASE c.confdeltype WHEN 'a' THEN 'NO ACTION' WHEN 'r' THEN 'RESTRICT' \
             WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' \
             ELSE '' END \
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
         WHERE n.nspname = 'public' AND c.contype IN ('p', 'u', 'f') \
         AND c.conrelid::regclass::text NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(pool)
    .await
    .expect("constraints");
    for (name, kind, keys, referenced, references, on_delete) in constraints {
        let table = schema
            .get_mut(&name)
            .expect("a constraint of a listed table");
        match kind.as_str() {
            "p" => table.primary_key = columns(&keys),
            "u" => {
                table.unique.insert(columns(&keys));
            }
            _ => {
                table.foreign_keys.insert(ForeignKey {
                    columns: columns(&keys),
                    table: referenced,
                    references: columns(&references),
                    on_delete,
                });
            }
        }
    }

    // Indexes that implement a key are left out; one a foreign key only
    // references (`repositories (id)`) is an index like any other.
    let indexes: Vec<(String, String, String, bool, bool)> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text, \
           (SELECT string_agg(a.attname::text, ',' ORDER BY k.ord) \
              FROM unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(num, ord) \
              JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.num), \
           ix.indisunique, ix.indpred IS NOT NULL \
         FROM pg_index ix \
         JOIN pg_class i ON i.oid = ix.indexrelid \
         JOIN pg_class t ON t.oid = ix.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND t.relname NOT LIKE '\\_sqlx%' \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = ix.indexrelid \
             AND c.contype IN ('p', 'u', 'x'))",
    )
    .fetch_all(pool)
    .await
    .expect("indexes");
    for (name, index, keys, unique, partial) in indexes {
        let table = schema.get_mut(&name).expect("an index of a listed table");
        let definition = Index::new(columns(&keys), unique, partial);
        table.indexes.insert(index, definition);
    }
    schema
}

async fn sqlite_schema(pool: &SqlitePool) -> Schema {
    let mut schema = Schema::new();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_sqlx%' ESCAPE '\\'",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    for (name, sql) in tables {
        let table = sqlite_table(pool, &name, &sql).await;
        schema.insert(name, table);
    }
    schema
}

async fn sqlite_table(pool: &SqlitePool, name: &str, sql: &str) -> Table {
    let mut table = Table::default();
    let columns_sql = "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk \
                       FROM pragma_table_info(?)";
    let rows: Vec<(String, String, bool, bool, i64)> = sqlx::query_as(columns_sql)
        .bind(name)
        .fetch_all(pool)
        .await
        .expect("columns");
    let autoincrement = sql.to_ascii_uppercase().contains("AUTOINCREMENT");
    let mut key: Vec<(i64, String)> = Vec::new();
    for (column, declared, not_null, has_default, pk) in rows {
        if pk > 0 {
            key.push((pk, column.clone()));
        }
        let default = match (has_default, autoincrement && pk > 0) {
            (_, true) => ColumnDefault::Generated,
            (true, false) => ColumnDefault::Value,
            (false, false) => ColumnDefault::None,
        };
        // A key column is NOT NULL on PostgreSQL by definition; SQLite would
        // take a NULL in a non-INTEGER key only through a legacy quirk, and
        // the catalog always binds its ids. Both read as not null.
        let nullable = !not_null && pk == 0;
        table.columns.insert(
            column,
            Column {
                ty: sqlite_type(&declared),
                nullable,
                default,
            },
        );
    }
    key.sort();
    table.primary_key = key.into_iter().map(|(_, column)| column).collect();

    let keys: Vec<(i64, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT id, \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list(?) \
         ORDER BY id, seq",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .expect("foreign keys");
    let mut by_id: BTreeMap<i64, ForeignKey> = BTreeMap::new();
    for (id, referenced, from, to, on_delete) in keys {
        let key = by_id.entry(id).or_insert_with(|| ForeignKey {
            columns: Vec::new(),
            table: referenced,
            references: Vec::new(),
            on_delete,
        });
        key.columns.push(from);
        // No `to`: the key references the table's primary key, which every
        // table of the catalog names `id` where it is referenced this way.
        key.references.push(to.unwrap_or_else(|| "id".into()));
    }
    table.foreign_keys = by_id.into_values().collect();

    let indexes: Vec<(String, bool, String, bool)> =
        sqlx::query_as("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?)")
            .bind(name)
            .fetch_all(pool)
            .await
            .expect("indexes");
    for (index, unique, origin, partial) in indexes {
        let columns: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM pragma_index_info(?) ORDER BY seqno")
                .bind(&index)
                .fetch_all(pool)
                .await
                .expect("index columns");
        let columns: Vec<String> = columns.into_iter().map(|(c,)| c).collect();
        match origin.as_str() {
            // The primary key's own index: the key is read from the columns.
            "pk" => {}
            "u" => {
                table.unique.insert(columns);
            }
            _ => {
                table
                    .indexes
                    .insert(index, Index::new(columns, unique, partial));
            }
        }
    }
    table
}

/// The schema of a freshly migrated catalog of `backend`, read back from
/// the database with a pool of the test's own.
async fn migrated(backend: Backend) -> Schema {
    let (catalog, guard) = fresh_catalog(backend).await;
    catalog.close().await;
    match backend {
        Backend::Postgres => {
            let pool = PgPool::connect(guard.url()).await.expect("connect");
            let schema = postgres_schema(&pool).await;
            pool.close().await;
            schema
        }
        Backend::Sqlite => {
            let pool = SqlitePool::connect(guard.url()).await.expect("open");
            let schema = sqlite_schema(&pool).await;
            pool.close().await;
            schema
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_sqlite_migrations_give_the_same_schema() {
    let postgres = migrated(Backend::Postgres).await;
    let sqlite = migrated(Backend::Sqlite).await;
    assert!(
        postgres.len() > 10 && postgres.contains_key("runs"),
        "the schema was not read: {:?}",
        postgres.keys()
    );
    let found = differences(&postgres, &sqlite);
    let known: Vec<String> = KNOWN_DIFFERENCES
        .iter()
        .map(|(fact, _)| (*fact).to_owned())
        .collect();
    let unexpected: Vec<&String> = found.iter().filter(|d| !known.contains(d)).collect();
    let gone: Vec<&String> = known.iter().filter(|k| !found.contains(k)).collect();
    assert!(
        unexpected.is_empty() && gone.is_empty(),
        "migrations/postgres and migrations/sqlite disagree.\n\
         New differences (fix a migration, or list one in KNOWN_DIFFERENCES with its reason):\n  {}\n\
         Listed differences that are gone (remove them from KNOWN_DIFFERENCES):\n  {}",
        join_lines(&unexpected),
        join_lines(&gone),
    );
}

fn join_lines(lines: &[&String]) -> String {
    if lines.is_empty() {
        return "(none)".into();
    }
    lines
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The comparer is not blind: two small schemas that differ in a column's
/// type, nullability and default, a foreign key's ON DELETE, a unique
/// constraint and an index each give one line per side.
#[test]
fn comparer_reports_every_kind_of_divergence() {
    let column = |ty, nullable, default| Column {
        ty,
        nullable,
        default,
    };
    let table = |owner_type, on_delete: &str, unique: bool, index_partial| Table {
        columns: BTreeMap::from([
            ("id".to_owned(), column("bytes", false, ColumnDefault::None)),
            (
                "owner".to_owned(),
                column(owner_type, true, ColumnDefault::None),
            ),
            (
                "name".to_owned(),
                column("text", false, ColumnDefault::Value),
            ),
        ]),
        primary_key: vec!["id".into()],
        foreign_keys: BTreeSet::from([ForeignKey {
            columns: vec!["owner".into()],
            table: "users".into(),
            references: vec!["id".into()],
            on_delete: on_delete.into(),
        }]),
        unique: if unique {
            BTreeSet::from([vec!["owner".to_owned(), "name".to_owned()]])
        } else {
            BTreeSet::new()
        },
        indexes: BTreeMap::from([(
            "things_name".to_owned(),
            Index {
                columns: vec!["name".into()],
                unique: false,
                partial: index_partial,
            },
        )]),
    };
    let same = Schema::from([("things".to_owned(), table("bytes", "CASCADE", true, false))]);
    assert!(differences(&same, &same.clone()).is_empty());

    let other = Schema::from([("things".to_owned(), table("text", "SET NULL", false, true))]);
    assert_eq!(
        differences(&same, &other),
        vec![
            "postgres only: things.owner: bytes null",
            "postgres only: things: foreign key (owner) references users(id) on delete CASCADE",
            "postgres only: things: index things_name (name)",
            "postgres only: things: unique (owner, name)",
            "sqlite only: things.owner: text null",
            "sqlite only: things: foreign key (owner) references users(id) on delete SET NULL",
            "sqlite only: things: index things_name (name) where ...",
        ]
    );

    let mut missing_table = same.clone();
    missing_table.insert("extra".to_owned(), Table::default());
    let mut nullable = same.clone();
    if let Some(things) = nullable.get_mut("things") {
        things
            .columns
            .insert("name".to_owned(), column("text", true, ColumnDefault::None));
    }
    assert_eq!(
        differences(&missing_table, &nullable),
        vec![
            "postgres only: extra: primary key ()",
            "postgres only: table extra",
            "postgres only: things.name: text not null default",
            "sqlite only: things.name: text null",
        ]
    );
}
