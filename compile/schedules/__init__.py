"""Schedules and tuning: one default rule per kind of kernel (after TVM's dlight rules), int8 dot products,
MetaSchedule tuning, and the transfer of records between similar tasks."""
