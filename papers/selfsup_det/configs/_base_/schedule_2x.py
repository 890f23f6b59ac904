# mmdet configs/_base_/schedules/schedule_2x.py: as 1x with steps at 16 and 22, 24 epochs.
_base_ = ["schedule_1x.py"]
lr_config = dict(step=[16, 22])
runner = dict(max_epochs=24)
