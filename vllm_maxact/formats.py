"""Number formats' largest finite values: one definition, for the summary, the report and the
INT-8 / FP8 figures."""

FP16_MAX = 65504.0
BF16_MAX = 3.3895313892515355e38
FP8_E4M3_MAX = 448.0
