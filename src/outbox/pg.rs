//! [`PgOutbox`]: the outbox in PostgreSQL, for applications that run as
//! several replicas (feature `postgres`).
//!
//! One row per draft, in `{schema}.relaymail_drafts`:
//!
//! ```sql
//! CREATE TABLE {schema}.relaymail_drafts (
//!     id              text PRIMARY KEY,       -- DraftId: creation time, then random
//!     area            text NOT NULL CONSTRAINT relaymail_drafts_area_check
//!                     CHECK (area IN ('drafts', 'failed', 'delivered')),
//!     next_attempt_ms bigint NOT NULL,        -- ms since 1970 (client clock): next
//!                                             -- attempt, or when it was delivered
//!     lease_token     bigint,                 -- the claim that holds it, if any
//!     lease_until     timestamptz,            -- when that claim lapses (server clock)
//!     draft           bytea NOT NULL,         -- the draft: relaymail's draft format 2
//!     waiting_on_settings boolean NOT NULL DEFAULT false
//!                                             -- the last attempt failed on the settings
//! );
//! CREATE INDEX relaymail_drafts_due
//!     ON {schema}.relaymail_drafts (next_attempt_ms) WHERE area = 'drafts';
//! CREATE INDEX relaymail_drafts_delivered
//!     ON {schema}.relaymail_drafts (next_attempt_ms) WHERE area = 'delivered';
//! CREATE INDEX relaymail_drafts_waiting
//!     ON {schema}.relaymail_drafts (id) WHERE area = 'drafts' AND waiting_on_settings;
//! CREATE TABLE {schema}.relaymail_schema (version integer NOT NULL);
//! ```
//!
//! [`PgOutbox::migrate`] creates exactly this ([`SCHEMA_VERSION`] 3), or
//! upgrades a version 1 or 2 table in place, idempotently, under an
//! advisory lock; teams that run their own migrations apply the same SQL
//! and insert version `3`. Delivered rows are deleted, or kept for
//! [`PgOutbox::with_retention`] and purged after.
//!
//! The columns `next_attempt_ms` and `waiting_on_settings` are what counts
//! for a draft's next attempt and [`DraftInfo::waiting_on_settings`]
//! (whatever the stored draft says), so that
//! [`Outbox::release_waiting_on_settings`] is one `UPDATE` of the flagged
//! rows that are not leased; the stored draft never carries the flag.
//!
//! **Claims** take due drafts with `FOR UPDATE SKIP LOCKED`, in batches,
//! each with a lease (a token and an expiry, [`PgOutbox::with_lease`]) that
//! a heartbeat renews while the claim is held. A deliverer that dies stops
//! renewing: once the lease lapses, another deliverer takes the draft.
//! Recording the outcome (complete, defer, fail) is fenced by the token: a
//! deliverer whose lease lapsed and was taken over gets
//! [`Error::is_conflict`] and changes nothing. A claim dropped without an
//! outcome is released at once.
//!
//! **Transactional enqueue**: [`PgOutbox::enqueue_in`] writes the draft
//! with the application's own transaction: a rolled-back signup sends no
//! welcome mail, a committed password change always sends its notice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::Row;

use super::codec::{decode_draft, encode_draft, millis};
use super::{Area, Claim, Deferral, DraftId, DraftInfo, Outbox, Page};
use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::Message;

/// The schema version [`PgOutbox::migrate`] brings a database to.
pub const SCHEMA_VERSION: i32 = 3;

/// Each schema version's SQL, in order (the module docs show the result).
fn migrations(s: &str) -> [(i32, Vec<String>); 3] {
    [
        (
            1,
            vec![
                format!(
                    "CREATE TABLE {s}.relaymail_drafts (
                        id text PRIMARY KEY,
                        area text NOT NULL CHECK (area IN ('drafts', 'failed')),
                        next_attempt_ms bigint NOT NULL,
                        lease_token bigint,
                        lease_until timestamptz,
                        draft bytea NOT NULL)"
                ),
                format!(
                    "CREATE INDEX relaymail_drafts_due ON {s}.relaymail_drafts (next_attempt_ms) WHERE area = 'drafts'"
                ),
            ],
        ),
        (
            // Delivered rows kept for a retention period.
            2,
            vec![
                format!("ALTER TABLE {s}.relaymail_drafts DROP CONSTRAINT relaymail_drafts_area_check"),
                format!(
                    "ALTER TABLE {s}.relaymail_drafts ADD CONSTRAINT relaymail_drafts_area_check
                        CHECK (area IN ('drafts', 'failed', 'delivered'))"
                ),
                format!(
                    "CREATE INDEX relaymail_drafts_delivered ON {s}.relaymail_drafts (next_attempt_ms) WHERE area = 'delivered'"
                ),
            ],
        ),
        (
            // Drafts waiting for the settings to be fixed, released by a reload.
            3,
            vec![
                format!(
                    "ALTER TABLE {s}.relaymail_drafts ADD COLUMN waiting_on_settings boolean NOT NULL DEFAULT false"
                ),
                format!(
                    "CREATE INDEX relaymail_drafts_waiting ON {s}.relaymail_drafts (id) WHERE area = 'drafts' AND waiting_on_settings"
                ),
            ],
        ),
    ]
}

/// The outbox in PostgreSQL. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct PgOutbox {
    pool: PgPool,
    schema: String,
    lease: Duration,
    retention: Option<Duration>,
    /// When delivered rows were last purged (ms since 1970), shared by
    /// clones: at most once a minute.
    purged_at: Arc<std::sync::atomic::AtomicU64>,
    listener: Arc<Listener>,
}

/// `LISTEN` for new drafts, started by the first
/// [`Outbox::wait_for_drafts`] and stopped with the last clone.
#[derive(Debug, Default)]
struct Listener {
    announced: Arc<tokio::sync::Notify>,
    task: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

fn db(what: &str, e: sqlx::Error) -> Error {
    // sqlx's configuration errors can quote the connection URL: say only
    // what failed.
    if let sqlx::Error::Configuration(_) = e {
        return Error::invalid(format!("{what}: the database settings are invalid"));
    }
    let transient = !matches!(
        e,
        sqlx::Error::RowNotFound | sqlx::Error::ColumnNotFound(_) | sqlx::Error::Decode(_)
    );
    let error = if transient {
        Error::unavailable(format!("{what}: the outbox database failed"))
    } else {
        Error::invalid(format!("{what}: the outbox table is not as expected"))
    };
    error.with_source(e)
}

fn check_schema(schema: &str) -> Result<(), Error> {
    let ok = !schema.is_empty()
        && schema.len() <= 48
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "the outbox schema name must be 1 to 48 lower-case letters, digits and '_', not starting with a digit",
        ))
    }
}

fn ms(t: SystemTime) -> i64 {
    i64::try_from(millis(t)).unwrap_or(i64::MAX)
}

/// The columns a draft is read from, for `SELECT` and `RETURNING`.
const DRAFT_COLUMNS: &str = "draft, next_attempt_ms, waiting_on_settings";

/// A row's draft: the stored draft, with the next attempt time and the
/// settings flag from their columns (which a release updates alone).
fn draft_of(
    row: &sqlx::postgres::PgRow,
    id: DraftId,
    area: Area,
    with_content: bool,
    what: &str,
) -> Result<Result<(DraftInfo, Vec<u8>), String>, Error> {
    let raw: Vec<u8> = row.try_get("draft").map_err(|e| db(what, e))?;
    let next: i64 = row.try_get("next_attempt_ms").map_err(|e| db(what, e))?;
    let waiting: bool = row.try_get("waiting_on_settings").map_err(|e| db(what, e))?;
    Ok(
        decode_draft(id, area, &raw, with_content).map(|(mut info, content)| {
            if let Some(t) = u64::try_from(next).ok().and_then(super::codec::from_millis) {
                info.next_attempt = t;
            }
            info.waiting_on_settings = waiting;
            (info, content)
        }),
    )
}

/// A draft's bytes as this outbox stores them: the flag lives in its
/// column only, so that the stored draft reads the same for any version.
fn stored(info: &DraftInfo, content: &[u8]) -> Vec<u8> {
    if !info.waiting_on_settings {
        return encode_draft(info, content);
    }
    let mut info = info.clone();
    info.waiting_on_settings = false;
    encode_draft(&info, content)
}

/// A claim's hold on its row: its token, and the heartbeat that renews it.
struct PgLease {
    id: String,
    token: i64,
    recorded: AtomicBool,
    heartbeat: tokio::task::JoinHandle<()>,
    outbox: PgOutbox,
}

impl Drop for PgLease {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if self.recorded.load(Ordering::Acquire) {
            return;
        }
        // Dropped without an outcome: release the row now rather than at
        // the lease's end.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (outbox, id, token) = (self.outbox.clone(), self.id.clone(), self.token);
            rt.spawn(async move {
                let sql = format!(
                    "UPDATE {} SET lease_token = NULL, lease_until = NULL WHERE id = $1 AND lease_token = $2",
                    outbox.table()
                );
                let _ = sqlx::query(&sql).bind(id).bind(token).execute(&outbox.pool).await;
            });
        }
    }
}

impl PgOutbox {
    /// Connects to `url` (`postgres://user:password@host/db`) with a pool
    /// of up to 5 connections; the tables live in `schema`, which
    /// [`migrate`](Self::migrate) creates. Nothing is written here.
    pub async fn connect(url: &str, schema: &str) -> Result<PgOutbox, Error> {
        check_schema(schema)?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| db("cannot connect to the outbox database", e))?;
        PgOutbox::with_pool(pool, schema)
    }

    /// An outbox on the application's own pool.
    pub fn with_pool(pool: PgPool, schema: &str) -> Result<PgOutbox, Error> {
        check_schema(schema)?;
        Ok(PgOutbox {
            pool,
            schema: schema.to_owned(),
            lease: Duration::from_secs(300),
            retention: None,
            purged_at: Arc::default(),
            listener: Arc::default(),
        })
    }

    /// How long a claim holds a draft without a heartbeat (default 5
    /// minutes, at least 1 second); the heartbeat renews it every third of
    /// that while the claim is held.
    pub fn with_lease(mut self, lease: Duration) -> PgOutbox {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// Keeps delivered rows (area `delivered`, invisible to the outbox
    /// operations) for `retention` after delivery, for audits, instead of
    /// deleting them at once; [`purge_delivered`](Self::purge_delivered)
    /// removes them afterwards (deliverers call it at most once a minute).
    pub fn with_retention(mut self, retention: Option<Duration>) -> PgOutbox {
        self.retention = retention;
        self
    }

    /// Deletes delivered rows older than the retention period; returns how
    /// many. Without a retention period there are none.
    pub async fn purge_delivered(&self) -> Result<u64, Error> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let now = ms(SystemTime::now());
        self.purged_at
            .store(u64::try_from(now).unwrap_or(0), Ordering::Relaxed);
        let cutoff = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let sql = format!(
            "DELETE FROM {} WHERE area = 'delivered' AND next_attempt_ms < $1",
            self.table()
        );
        let done = sqlx::query(&sql)
            .bind(cutoff)
            .execute(&self.pool)
            .await
            .map_err(|e| db("purge delivered drafts", e))?;
        Ok(done.rows_affected())
    }

    /// The pool (to begin the transactions [`enqueue_in`](Self::enqueue_in)
    /// writes in).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn table(&self) -> String {
        format!("{}.relaymail_drafts", self.schema)
    }

    /// The channel `NOTIFY` announces new drafts on.
    fn channel(&self) -> String {
        format!("relaymail_{}", self.schema)
    }

    /// Creates the schema and tables, or upgrades them to
    /// [`SCHEMA_VERSION`]; idempotent, and safe to run from several
    /// replicas at once (an advisory lock serialises them). Returns the
    /// version found before.
    pub async fn migrate(&self) -> Result<i32, Error> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await.map_err(|e| db("migrate", e))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("relaymail migrate {s}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| db("migrate", e))?;
        for sql in [
            format!("CREATE SCHEMA IF NOT EXISTS {s}"),
            format!("CREATE TABLE IF NOT EXISTS {s}.relaymail_schema (version integer NOT NULL)"),
        ] {
            sqlx::query(&sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| db("migrate", e))?;
        }
        let found: Option<i32> =
            sqlx::query_scalar(&format!("SELECT max(version) FROM {s}.relaymail_schema"))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db("migrate", e))?;
        let found = found.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(Error::invalid(format!(
                "the outbox schema {s} is at version {found}, newer than this relaymail ({SCHEMA_VERSION})"
            )));
        }
        for (version, steps) in migrations(s) {
            if found >= version {
                continue;
            }
            for sql in steps.iter().chain(&[
                format!("DELETE FROM {s}.relaymail_schema"),
                format!("INSERT INTO {s}.relaymail_schema (version) VALUES ({version})"),
            ]) {
                sqlx::query(sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db("migrate", e))?;
            }
        }
        tx.commit().await.map_err(|e| db("migrate", e))?;
        Ok(found)
    }

    /// Saves `message` as a draft in the caller's transaction (or on any
    /// connection: `&mut *tx`): the draft exists, and is announced to
    /// waiting deliverers, only if the transaction commits.
    pub async fn enqueue_in(&self, conn: &mut PgConnection, message: &Message) -> Result<DraftId, Error> {
        let mut ids = self.enqueue_many_in(conn, std::slice::from_ref(message)).await?;
        ids.pop()
            .ok_or_else(|| Error::invalid("the draft was not written"))
    }

    /// Saves `messages` as drafts in one statement on the caller's
    /// connection or transaction (all or none; one round trip, one
    /// `NOTIFY`). Every envelope is checked before anything is written.
    pub async fn enqueue_many_in(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
    ) -> Result<Vec<DraftId>, Error> {
        let now = SystemTime::now();
        let (mut ids, mut drafts) = (
            Vec::with_capacity(messages.len()),
            Vec::with_capacity(messages.len()),
        );
        for message in messages {
            let info = DraftInfo::new_draft(message, now)?;
            drafts.push(encode_draft(&info, message.content()));
            ids.push(info.id);
        }
        if ids.is_empty() {
            return Ok(ids);
        }
        let sql = format!(
            "INSERT INTO {} (id, area, next_attempt_ms, draft)
             SELECT id, 'drafts', $2, draft FROM UNNEST($1::text[], $3::bytea[]) AS d(id, draft)",
            self.table()
        );
        sqlx::query(&sql)
            .bind(
                ids.iter()
                    .map(|id| id.as_str().to_owned())
                    .collect::<Vec<String>>(),
            )
            .bind(ms(now))
            .bind(drafts)
            .execute(&mut *conn)
            .await
            .map_err(|e| db("enqueue", e))?;
        // Delivered to listeners when (and if) the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(self.channel())
            .bind(ids[0].as_str())
            .execute(&mut *conn)
            .await
            .map_err(|e| db("enqueue", e))?;
        Ok(ids)
    }

    /// [`enqueue_many_in`](Self::enqueue_many_in) in a transaction of its
    /// own: the drafts are durable, all of them, when it returns `Ok`.
    pub async fn enqueue_many(&self, messages: &[Message]) -> Result<Vec<DraftId>, Error> {
        let mut tx = self.pool.begin().await.map_err(|e| db("enqueue", e))?;
        let ids = self.enqueue_many_in(&mut tx, messages).await?;
        tx.commit().await.map_err(|e| db("enqueue", e))?;
        Ok(ids)
    }

    async fn read(
        &self,
        area: Area,
        id: &DraftId,
        with_content: bool,
    ) -> Result<(DraftInfo, Vec<u8>), Error> {
        let sql = format!(
            "SELECT {DRAFT_COLUMNS} FROM {} WHERE id = $1 AND area = $2",
            self.table()
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .bind(area.name())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db("read a draft", e))?
            .ok_or_else(|| Error::invalid(format!("no draft {id} in the {} area", area.name())))?;
        draft_of(&row, id.clone(), area, with_content, "read a draft")?
            .map_err(|why| Error::invalid(format!("draft {id} is corrupt ({why})")))
    }

    /// Writes a claimed draft's new state, fenced by its lease.
    async fn record(&self, claim: Claim, info: DraftInfo) -> Result<(), Error> {
        let lease = lease_of(&claim)?;
        let sql = format!(
            "UPDATE {} SET area = $3, next_attempt_ms = $4, draft = $5, waiting_on_settings = $6,
                lease_token = NULL, lease_until = NULL
             WHERE id = $1 AND lease_token = $2",
            self.table()
        );
        let done = sqlx::query(&sql)
            .bind(&lease.id)
            .bind(lease.token)
            .bind(info.area.name())
            .bind(ms(info.next_attempt))
            .bind(stored(&info, &claim.content))
            .bind(info.waiting_on_settings)
            .execute(&self.pool)
            .await
            .map_err(|e| db("record an attempt", e))?;
        fenced(lease, done.rows_affected())
    }
}

fn lease_of(claim: &Claim) -> Result<&PgLease, Error> {
    claim
        .lease::<PgLease>()
        .ok_or_else(|| Error::invalid("the claim was not made by this PostgreSQL outbox"))
}

fn fenced(lease: &PgLease, rows: u64) -> Result<(), Error> {
    // Recorded either way: by this claim, or by the one that took over
    // (whose row must not be released when this claim is dropped).
    lease.recorded.store(true, Ordering::Release);
    if rows == 1 {
        Ok(())
    } else {
        Err(Error::conflict(format!(
            "draft {}: this claim's lease lapsed and another deliverer holds the draft (or it was deleted); nothing was recorded",
            lease.id
        )))
    }
}

impl Outbox for PgOutbox {
    fn enqueue<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<DraftId, Error>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(|e| db("enqueue", e))?;
            self.enqueue_in(&mut conn, message).await
        })
    }

    fn claim_due(&self, now: SystemTime, max: usize) -> BoxFuture<'_, Result<Vec<Claim>, Error>> {
        Box::pin(async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            let last = self.purged_at.load(Ordering::Relaxed);
            if self.retention.is_some() && millis(now).saturating_sub(last) >= 60_000 {
                self.purge_delivered().await?;
            }
            let token = (crate::rand::random_u64() >> 1) as i64;
            let t = self.table();
            let sql = format!(
                "WITH due AS (
                    SELECT id FROM {t}
                    WHERE area = 'drafts' AND next_attempt_ms <= $1
                      AND (lease_until IS NULL OR lease_until < now())
                    ORDER BY next_attempt_ms, id
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED)
                 UPDATE {t} d SET lease_token = $3, lease_until = now() + make_interval(secs => $4)
                 FROM due WHERE d.id = due.id
                 RETURNING d.id, d.draft, d.next_attempt_ms, d.waiting_on_settings"
            );
            let rows = sqlx::query(&sql)
                .bind(ms(now))
                .bind(i64::try_from(max).unwrap_or(i64::MAX))
                .bind(token)
                .bind(self.lease.as_secs_f64())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db("claim drafts", e))?;
            let mut claims = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.try_get("id").map_err(|e| db("claim drafts", e))?;
                let Some(draft_id) = DraftId::parse(&id) else {
                    continue;
                };
                let (info, content) = match draft_of(&row, draft_id, Area::Drafts, true, "claim drafts")? {
                    Ok(d) => d,
                    Err(why) => {
                        // Unreadable: out of the way, with the reason.
                        let sql = format!(
                            "UPDATE {t} SET area = 'failed', lease_token = NULL, lease_until = NULL WHERE id = $1"
                        );
                        let _ = sqlx::query(&sql).bind(&id).execute(&self.pool).await;
                        tracing_corrupt(&id, &why);
                        continue;
                    }
                };
                claims.push(Claim::new(info, content, self.lease_for(id, token)));
            }
            Ok(claims)
        })
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<SystemTime>, Error>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT min(next_attempt_ms) FROM {} WHERE area = 'drafts'",
                self.table()
            );
            let next: Option<i64> = sqlx::query_scalar(&sql)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db("find the next draft", e))?;
            Ok(next.and_then(|n| super::codec::from_millis(u64::try_from(n).ok()?)))
        })
    }

    fn complete(&self, claim: Claim) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let lease = lease_of(&claim)?;
            let sql = match self.retention {
                None => format!("DELETE FROM {} WHERE id = $1 AND lease_token = $2", self.table()),
                // Kept, stamped with the delivery time, until purged.
                Some(_) => format!(
                    "UPDATE {} SET area = 'delivered', next_attempt_ms = $3, lease_token = NULL, lease_until = NULL
                     WHERE id = $1 AND lease_token = $2",
                    self.table()
                ),
            };
            let mut query = sqlx::query(&sql).bind(&lease.id).bind(lease.token);
            if self.retention.is_some() {
                query = query.bind(ms(SystemTime::now()));
            }
            let done = query
                .execute(&self.pool)
                .await
                .map_err(|e| db("record a delivery", e))?;
            fenced(lease, done.rows_affected())
        })
    }

    fn defer_claim(&self, claim: Claim, deferral: Deferral) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut info = claim.info().clone();
            deferral.apply(&mut info)?;
            self.record(claim, info).await
        })
    }

    fn fail_claim<'a>(&'a self, claim: Claim, reason: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut info = claim.info().clone();
            info.area = Area::Failed;
            info.attempts += 1;
            info.last_error = Some(crate::email::one_line(reason).into_owned());
            info.waiting_on_settings = false;
            self.record(claim, info).await
        })
    }

    fn list<'a>(
        &'a self,
        area: Area,
        after: Option<&'a DraftId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, Error>> {
        Box::pin(async move {
            // Keyset paging on the primary key: a page costs O(page).
            let sql = format!(
                "SELECT id, {DRAFT_COLUMNS} FROM {} WHERE area = $1 AND id > $2 ORDER BY id LIMIT $3",
                self.table()
            );
            let rows = sqlx::query(&sql)
                .bind(area.name())
                .bind(after.map_or("", DraftId::as_str))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db("list drafts", e))?;
            let full = rows.len() == limit && limit > 0;
            let mut drafts = Vec::with_capacity(rows.len());
            let mut last = None;
            for row in rows {
                let id: String = row.try_get("id").map_err(|e| db("list drafts", e))?;
                let Some(draft_id) = DraftId::parse(&id) else {
                    continue;
                };
                last = Some(draft_id.clone());
                if let Ok((info, _)) = draft_of(&row, draft_id, area, false, "list drafts")? {
                    drafts.push(info);
                }
            }
            Ok(Page {
                drafts,
                next: if full { last } else { None },
                quarantined: Vec::new(),
            })
        })
    }

    fn inspect<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<DraftInfo, Error>> {
        Box::pin(async move { Ok(self.read(area, id, false).await?.0) })
    }

    fn read_message<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        Box::pin(async move { Ok(self.read(area, id, true).await?.1) })
    }

    fn wait_for_drafts(&self) -> BoxFuture<'_, ()> {
        self.listen();
        let announced = self.listener.announced.clone();
        Box::pin(async move { announced.notified().await })
    }

    fn retry_now<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let (mut info, content) = self.read(area, id, true).await?;
            let now = SystemTime::now();
            info.area = Area::Drafts;
            info.next_attempt = now;
            info.waiting_on_settings = false;
            let sql = format!(
                "UPDATE {} SET area = 'drafts', next_attempt_ms = $3, draft = $4, waiting_on_settings = false
                 WHERE id = $1 AND area = $2 AND (lease_until IS NULL OR lease_until < now())",
                self.table()
            );
            let done = sqlx::query(&sql)
                .bind(id.as_str())
                .bind(area.name())
                .bind(ms(now))
                .bind(stored(&info, &content))
                .execute(&self.pool)
                .await
                .map_err(|e| db("retry a draft", e))?;
            if done.rows_affected() == 1 {
                Ok(())
            } else {
                Err(Error::conflict(format!(
                    "draft {id} is being delivered right now (or is gone); try again after the attempt"
                )))
            }
        })
    }

    /// One `UPDATE` of the flagged drafts that no claim holds (no lease,
    /// or a lease that lapsed: what [`claim_due`](Outbox::claim_due) would
    /// take over too). A draft leased by a deliverer is left as it is: its
    /// attempt records its own outcome, fenced by its lease, and the mailer
    /// whose settings were reloaded makes it due again at once if that
    /// attempt fails on the settings. When drafts were released, waiting
    /// deliverers of every replica are woken (`NOTIFY`).
    fn release_waiting_on_settings(&self) -> BoxFuture<'_, Result<usize, Error>> {
        Box::pin(async move {
            let sql = format!(
                "UPDATE {} SET next_attempt_ms = $1, waiting_on_settings = false
                 WHERE area = 'drafts' AND waiting_on_settings
                   AND (lease_until IS NULL OR lease_until < now())",
                self.table()
            );
            let done = sqlx::query(&sql)
                .bind(ms(SystemTime::now()))
                .execute(&self.pool)
                .await
                .map_err(|e| db("release drafts waiting on the settings", e))?;
            let released = usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
            if released > 0 {
                // Best effort: deliverers poll anyway.
                let _ = sqlx::query("SELECT pg_notify($1, 'released')")
                    .bind(self.channel())
                    .execute(&self.pool)
                    .await;
            }
            Ok(released)
        })
    }

    fn delete<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let sql = format!("DELETE FROM {} WHERE id = $1 AND area = $2", self.table());
            let done = sqlx::query(&sql)
                .bind(id.as_str())
                .bind(area.name())
                .execute(&self.pool)
                .await
                .map_err(|e| db("delete a draft", e))?;
            if done.rows_affected() == 1 {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "no draft {id} in the {} area",
                    area.name()
                )))
            }
        })
    }
}

impl PgOutbox {
    /// Starts the `LISTEN` task once: each notification on the outbox's
    /// channel (sent when a draft commits, from any process) wakes one idle
    /// deliverer. After a lost connection it listens again and wakes the
    /// deliverer once, since notifications sent meanwhile are gone.
    fn listen(&self) {
        self.listener.task.get_or_init(|| {
            let (pool, channel) = (self.pool.clone(), self.channel());
            let announced = self.listener.announced.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(mut listener) = PgListener::connect_with(&pool).await {
                        if listener.listen(&channel).await.is_ok() {
                            // Anything committed before now: look once.
                            announced.notify_one();
                            while let Ok(Some(_)) = listener.try_recv().await {
                                announced.notify_one();
                            }
                        }
                    }
                    // The database went away: the deliverer polls meanwhile.
                    announced.notify_one();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
            .abort_handle()
        });
    }

    /// A lease for one claimed row, with its heartbeat.
    fn lease_for(&self, id: String, token: i64) -> PgLease {
        let outbox = self.clone();
        let (row, period) = (id.clone(), self.lease / 3);
        let heartbeat = tokio::spawn(async move {
            let sql = format!(
                "UPDATE {} SET lease_until = now() + make_interval(secs => $3) WHERE id = $1 AND lease_token = $2",
                outbox.table()
            );
            loop {
                tokio::time::sleep(period).await;
                let renewed = sqlx::query(&sql)
                    .bind(&row)
                    .bind(token)
                    .bind(outbox.lease.as_secs_f64())
                    .execute(&outbox.pool)
                    .await;
                match renewed {
                    Ok(done) if done.rows_affected() == 1 => {}
                    // Taken over or recorded: nothing left to renew.
                    Ok(_) => return,
                    // The database is away: try again next period.
                    Err(_) => {}
                }
            }
        });
        PgLease {
            id,
            token,
            recorded: AtomicBool::new(false),
            heartbeat,
            outbox: self.clone(),
        }
    }
}

#[cfg(feature = "tracing")]
fn tracing_corrupt(id: &str, why: &str) {
    tracing::warn!(draft = id, why, "corrupt draft moved to the failed area");
}

#[cfg(not(feature = "tracing"))]
fn tracing_corrupt(_id: &str, _why: &str) {}
