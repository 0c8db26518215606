#
# Cookbook:: backup_agent
# Resource:: job
#
# One job of the agent, declared from a wrapper cookbook:
#
#   include_recipe 'backup_agent'
#   backup_agent_job 'pg' do
#     type 'command'
#     preset 'postgresql'
#     database 'app'
#     schedule 'daily at 01:00'
#   end
#
# Properties carry the config file's job keys under the same names (except `freeze_paths`, the
# config's `freeze`: Ruby reserves that name). The resource writes nothing by itself: :create
# adds the job to this run's list in node.run_state, :delete takes it out (an attribute job of
# the same name too), and backup_agent::config renders the one config.yaml from attributes plus
# that list at the end of the run. It counts as updated when its job in that file will change,
# so `notifies` on it fires then, and only then. A job nobody declares any more is therefore gone from the
# next config. Secrets (a command job's password, secret environment variables) never go here:
# they come from the encrypted data bag item, job_secrets.<job>.password / .env.

unified_mode true
provides :backup_agent_job

description 'A backup-agent job (files, command or ebs_snapshot), merged into /etc/backup-agent/config.yaml'

checks = BackupAgentCookbook::Validation::CALLBACKS
storage_classes = BackupAgentCookbook::Validation::STORAGE_CLASSES

property :job_name, String, name_property: true, description: 'the job name (the key under jobs:)'
property :type, String, equal_to: BackupAgentCookbook::Validation::JOB_TYPES, description: 'files, command or ebs_snapshot'

# Every type.
property :schedule, String, callbacks: checks[:schedule], description: "e.g. 'daily at 02:00', 'every 6 hours'; none: only `backup-agent run`"
property :splay, Integer, callbacks: checks[:splay], description: "seconds (0..86400) over which a fleet's runs of this job are spread; default: the global splay"
property :catch_up, [true, false], description: 'a run missed while the daemon or node was down runs once soon after start (agent default: true)'
property :retention, Hash, callbacks: checks[:retention], description: 'keep_last/keep_hourly/keep_daily/keep_weekly/keep_monthly/keep_yearly => count >= 0'
property :drill, Hash, callbacks: checks[:drill], description: "restore drills: {'schedule' => 'weekly on sunday at 05:00', 'sample_files' => 20}"
property :timeout, [Integer, Float], description: 'seconds after which the run is stopped and fails (command jobs: 21600 when unset)'
property :pre, Array, callbacks: checks[:argv], description: 'argv run before the snapshot (ebs_snapshot)'
property :post, Array, callbacks: checks[:argv], description: 'argv run after the snapshot (ebs_snapshot)'

# files and command jobs: where their data is stored.
property :storage_class, String, equal_to: storage_classes, description: "S3 storage class of the job's objects (files, command)"
property :transition_days, Integer, description: "`bucket setup` moves the job's data to transition_class this many days after upload (files, command)"
property :transition_class, String, equal_to: storage_classes - %w(STANDARD), description: 'the class transition_days moves data to (files, command)'
property :restore_tier, String, equal_to: %w(Expedited Standard Bulk), description: 'Glacier retrieval tier `backup-agent restore` asks for (files, command)'
property :restore_days, Integer, description: 'days a restored copy of archived data stays readable (files, command)'

# files jobs.
property :paths, Array, callbacks: checks[:absolute_paths], description: 'absolute paths to back up (files)'
property :exclude, Array, callbacks: checks[:strings], description: 'glob patterns to leave out; a leading / anchors at the root (files)'
property :one_file_system, [true, false], description: 'stay on the file system of each path (files)'
property :follow_symlinks, [true, false], description: 'back up what symlinks point to instead of the links (files)'
property :settle, [Integer, Float], description: 'schedule continuous: seconds after a change under paths that the snapshot starts (agent default: 10)'
property :min_interval, [Integer, Float], description: 'schedule continuous: at least this many seconds between two runs (agent default: 60)'

# command jobs.
property :command, Array, callbacks: checks[:argv], description: 'argv whose stdout is the backup (command)'
property :shell, [true, false], description: "join the command's elements into one /bin/sh -c line (command)"
property :preset, String, equal_to: %w(postgresql mysql), description: 'postgresql or mysql: the dump and restore commands are built from database/host/port/username (command)'
property :database, String, description: 'database to dump (command with preset)'
property :tables, Array, callbacks: checks[:strings], description: 'only these tables (command with preset)'
property :schemas, Array, callbacks: checks[:strings], description: 'only these schemas (command with preset postgresql)'
property :host, String, description: 'database host; a path means a unix socket (command with preset)'
property :port, Integer, description: 'database port (command with preset)'
property :username, String, description: 'database user; its password: job_secrets.<job>.password of the data bag item (command)'
property :env, Hash, callbacks: checks[:string_map], description: 'not for secrets: job_secrets.<job>.env of the data bag item is'
property :user, String, description: 'OS user the command runs as (command)'
property :compression, String, equal_to: %w(gzip zstd none), description: 'gzip, zstd or none: how the dump is compressed (command)'
property :restore_command, Array, callbacks: checks[:argv], description: 'argv `backup-agent restore` pipes the dump into (command)'
property :allow_empty, [true, false], description: 'a command that exits 0 without output is a backup (default: the run fails)'

# ebs_snapshot jobs.
property :volumes, [String, Array], callbacks: checks[:volumes], description: "'all' or a list of volume ids and device names (ebs_snapshot)"
property :exclude_root, [true, false], description: 'leave the root volume out (ebs_snapshot)'
property :multi_volume, [true, false], description: 'one crash-consistent CreateSnapshots call for all volumes (ebs_snapshot)'
property :tags, Hash, callbacks: checks[:string_map], description: 'tags put on the snapshots (ebs_snapshot)'
property :wait, [true, false], description: 'wait until the snapshots are completed (ebs_snapshot)'
property :wait_timeout, [Integer, Float], description: 'seconds to wait for completed snapshots (ebs_snapshot)'
property :copy_to_regions, Array, callbacks: checks[:strings], description: 'regions to copy the snapshots to (ebs_snapshot)'
property :copy_kms_key_id, String, description: 'KMS key of the copies (ebs_snapshot)'
property :freeze_paths, Array, callbacks: checks[:absolute_paths], description: "the config's `freeze` (filesystems to fsfreeze)"
property :hook_timeout, [Integer, Float], description: 'seconds each pre/post hook may take (ebs_snapshot)'

# A name property is not checked like a set value: check it here, at compile time.
def after_created
  super
  return if BackupAgentCookbook::Validation::JOB_NAME.match?(job_name)
  raise Chef::Exceptions::ValidationFailed,
        "backup_agent_job[#{name}]: '#{job_name}' is not a job name (letters, digits, '_', '.', '-'; at most 63)"
end

action :create, description: 'Adds the job to the config rendered at the end of this run' do
  backup_agent_register_job(new_resource.job_name, job)
  report_change(rendered_job(job))
end

action :delete, description: 'Leaves the job out of the config rendered at the end of this run, even if attributes define it' do
  backup_agent_register_job(new_resource.job_name, nil)
  report_change(nil)
end

# The cookbook's helpers (backup_agent_register_job, backup_agent_config_path) come with the
# recipe DSL every action class has.
action_class do
  # The properties that were set, under the config file's key names.
  def job
    keys = new_resource.class.properties(false).keys - [:job_name]
    keys.select { |key| new_resource.property_is_set?(key) }.to_h do |key|
      [key == :freeze_paths ? 'freeze' : key.to_s, new_resource.public_send(key)]
    end
  end

  # The resource counts as updated (so its notifications fire) exactly when the job in the
  # config file will differ from the one there now: the config renders at the end of the run,
  # but what this job will look like in it is known now. Nothing is logged but the job's name:
  # the job may carry the data bag item's secrets.
  def report_change(wanted)
    name = new_resource.job_name
    current = BackupAgentCookbook.config_jobs(backup_agent_config_path)[name]
    return if wanted == current
    what = if wanted.nil? then 'remove'
           elsif current.nil? then 'add'
           else 'change'
           end
    converge_by("#{what} job #{name} in #{backup_agent_config_path} (rendered at the end of the run)") {}
  end

  # This job as the config will have it: the resource's keys, attributes of the same name over
  # them, the item's job secrets; nil when attributes remove it. A job the config will refuse
  # (the template says why) counts as changed.
  def rendered_job(job)
    name = new_resource.job_name
    attribute_jobs = node['backup_agent']['jobs'].to_hash
    secrets = node.run_state[BackupAgentCookbook::RUN_STATE_KEY] || {}
    config = BackupAgentCookbook::ConfigBuilder.build(
      settings: {}, jobs: attribute_jobs.slice(name), resource_jobs: { name => job },
      secrets: { 'job_secrets' => secrets['job_secrets'] }, node_name: node.name, environment: node.chef_environment
    )
    (config['jobs'] || {})[name]
  rescue BackupAgentCookbook::ConfigError
    :refused
  end
end
