"""The command-line report tools, each a small ``main`` over library functions:

- ``python -m iwae.reports.table1 <sweep dir>``: Table 1, figures and the runs' CSV.
- ``python -m iwae.reports.table2 <sweep dir>``: Table 2 (VAE <-> IWAE fine-tuning).
- ``python -m iwae.reports.binarization <sweep dir>``: fixed vs dynamic binarization.
- ``python -m iwae.reports.snr``: gradient SNR of the IWAE estimators against k.
- ``python -m iwae.reports.reproduction evaluate|report``: when the IWAE overtakes the VAE.
"""
