"""Rule supplementary: the paper's bootstrap experiment A and the saturation of each checkpoint's global max, exact
from per-sample maxima (no re-measurement), beside the paper's own experiment A where it published one."""
import pandas as pd

from maxact.corpus.tokenization import read_tokens
from maxact.io import atomic_save, write_json
from maxact.points import recompute_global_max
from maxact.rulelog import rule_logging
from maxact.study.analysis import published_bootstrap, supplementary
from maxact.study.resultset import load_result

with rule_logging(snakemake) as log:
    a = dict(snakemake.params.analysis)
    boots, sats, verdicts = [], [], {}
    for name, ps_path, tok_path in zip(snakemake.params.checkpoints, snakemake.input.per_sample, snakemake.input.tokens):
        tokens, _ = read_tokens(tok_path)
        b, s, v = supplementary(pd.read_parquet(ps_path), tokens[["sample_id", "category"]], a["bootstrap_sizes"],
                                a["bootstrap_seeds"], name, seed=a["bootstrap_seed"])
        boots.append(b)
        sats.append(s)
        verdicts[name] = v
        log.info("%s: %s", name, v)
    full = {}
    for p in snakemake.input.published:
        r = load_result(p)
        full[r["name"]] = abs(recompute_global_max(r["raw"]["per_layer_stats"])[0])
    published = published_bootstrap(list(snakemake.input.published_exp_a), full)
    log.info("published experiment A: %d rows", len(published))
    atomic_save(snakemake.output.bootstrap, lambda tmp: pd.concat(boots + [published]).to_csv(tmp, index=False))
    atomic_save(snakemake.output.saturation, lambda tmp: pd.concat(sats).to_csv(tmp, index=False))
    write_json(snakemake.output.verdicts, verdicts)
