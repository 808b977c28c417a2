-- Room on each page for every row's claim. A claim writes the lease (owner and expiry, columns no
-- index holds) into a new version of the row; on the same page that is a HOT update: no new index
-- entries, and nothing for VACUUM to clean out of the indexes afterwards. At the old fillfactor
-- (70) a page filled by a bulk insert had room for about a third of its rows' new versions, so a
-- backlog claimed a thousand at a time wrote two thirds of its leases as full updates, with three
-- index entries each. A leased version is a little longer than the pending one (the owner's name),
-- so each row needs a little more than its own size free: under half a page filled.
-- Applies to pages written from now on; no rewrite of the table.
ALTER TABLE sync_outbox SET (fillfactor = 45);
