-- Reports (issue 15): `report_dims` rows are upserted in place by the rollup worker, a
-- few times each (a day row once per batch that has events of that day). At the default
-- fillfactor every update moved the row to the end of the table, so the rows of
-- consecutive buckets ended up scattered and a page of a report (2,000 rows) read as many
-- heap pages, cold ones from disk under memory pressure. With room left on each page the
-- updates stay on the row's page (HOT: no index entry either), and the rows of a bucket
-- stay where they were first written, next to their neighbours. Applies to pages written
-- from now on (a `reports rebuild` or reset rewrites the rollups).
alter table report_dims set (fillfactor = 70);
