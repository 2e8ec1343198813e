"""`splitrelay cost`: is a hosted edge cheaper than this kit's own split edge at a given volume?

Modules, one job each: `errors` (the one bad-input error), `catalogue` (sourced prices and user
overrides), `traffic` (volume and the quantities derived from it), `breakdown` (line items and the
interface every option shares), `hosted` and `custom` (the options), `options` (choosing them),
`solve` (break-even volumes), `report` (results as data, JSON and CSV), `render` (the terminal
table), `plot`, `files` (atomic writes), `aws_prices` (optional refresh from the AWS Pricing API)
and `cli`. See docs/costs.md for every formula and assumption.
"""
