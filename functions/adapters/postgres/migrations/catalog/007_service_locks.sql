-- Who evaluates a service, as a row lock instead of a transaction-level advisory lock. Every
-- login of this database (on AWS the first shard's: its application login, its monitor, its
-- mover) may take any advisory lock, and the evaluation's key was (0x5ca1e, hashtext(service)):
-- a login that held it for its session made every evaluation of that service stand aside,
-- silently and for as long as it liked, so the service was never scaled. A row of this table
-- can be locked only by a login that may update it, which only ca_dms_control may
-- (least-privilege.test.ts, "an application login's locks").
--
-- catalog-store.ts inserts a service's row once (`on conflict do nothing`, in a statement of its
-- own, which does not wait for a lock held on an existing row) and then, in the evaluation's
-- transaction, locks it `for update skip locked` (or waits for it, `for update`): the lock ends
-- with the transaction, as the advisory one did, and pins nothing behind RDS Proxy.
--
-- The switches' writers were serialised the same way (hashtext('catalog.scaling_switches'),
-- hashtext(scope)); they now lock catalog.scaling_switches in SHARE ROW EXCLUSIVE mode, as the
-- configuration's writers lock catalog.scaling_config (006 grants the UPDATE that mode needs).
--
-- Safe on a live catalog: a new table and a grant, no lock on any existing table. Every
-- statement can run again with the same result.
create table if not exists catalog.service_locks (
  service text primary key
);
grant select, insert, update on catalog.service_locks to ca_dms_control;
