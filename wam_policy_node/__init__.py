"""wam_policy_node: policy backends, the action-chunk runtime, the safety filter and the ROS node.

Pure cores (no ROS): :mod:`.backends`, :mod:`.observation`, :mod:`.timesync`, :mod:`.runtime`,
:mod:`.safety`, :mod:`.controller`. The ROS shell is :mod:`.node`.
"""
