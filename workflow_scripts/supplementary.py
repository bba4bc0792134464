"""Rule supplementary: bootstrap and saturation of each checkpoint's global max (no re-measurement)."""
import pandas as pd

from maxact.corpus.tokenization import read_tokens
from maxact.io import atomic_save, write_json
from maxact.rulelog import rule_logging
from maxact.study.analysis import supplementary

with rule_logging(snakemake) as log:
    a = dict(snakemake.params.analysis)
    boots, sats, verdicts = [], [], {}
    for name, ps_path, tok_path in zip(snakemake.params.checkpoints, snakemake.input.per_sample, snakemake.input.tokens):
        tokens, _ = read_tokens(tok_path)
        cats = tokens.set_index("sample_id")["category"]
        b, s, v = supplementary(pd.read_parquet(ps_path), cats, a["bootstrap_sizes"], a["bootstrap_seeds"], name)
        boots.append(b)
        sats.append(s)
        verdicts[name] = v
        log.info("%s: %s", name, v)
    atomic_save(snakemake.output.bootstrap, lambda tmp: pd.concat(boots).to_csv(tmp, index=False))
    atomic_save(snakemake.output.saturation, lambda tmp: pd.concat(sats).to_csv(tmp, index=False))
    write_json(snakemake.output.verdicts, verdicts)
