-- GET /status shows each service's last applied change. Most decisions are 'unchanged' (one
-- per service per evaluation), so walking the (service, time) index to the newest applied row
-- reads every decision since that change: for a service that has not scaled for a month, about
-- 43,000 rows per call. This partial index holds only the applied ones, so the lookup is one
-- index entry per service however long the history is.
create index scaling_decisions_applied_idx
  on catalog.scaling_decisions (service, decided_at desc, id desc)
  where outcome = 'applied';
