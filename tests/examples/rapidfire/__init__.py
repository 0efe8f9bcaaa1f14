"""RapidFire AI's tutorials, ported: each runs with only imports, models, data and sizes changed
(a comment on each changed line), offline, on data its test builds."""
