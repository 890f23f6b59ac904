# The only overrides of configs/selfsup_pretrain (spec §2.2): frozen_stages=0 (the stem stays frozen, mmdet
# semantics), SyncBN in the backbone, BN layers in train mode. Neck and heads are unchanged.
model = dict(frozen_stages=0, norm="SyncBN", norm_eval=False)
