"""The data-scaling sweep's report: `results.csv` -> power-law fits, findings, figures and
`REPORT.md` (`python -m vit_jax.scaling <sweep workdir> [title]`).

Modules: `results` (the results schema: columns, reading, writing, grouping into curves),
`powerlaw` (fits of test error against training-set size, crossings), `tables` (number
formatting and tables), `findings` (sentences from the numbers), `figures` (the PNG figures),
`report` (`write_report`: figures, REPORT.md and report.json).
"""
