#
# Cookbook:: backup_agent
# Ohai plugin:: backup_agent (the cookbook's ohai/ directory; settings from recipe backup_agent::fleet_view)
#
# The fleet view: each job's last result, last success, snapshot count and last prune (time,
# result, snapshots forgotten, last collection of unreferenced data) from `backup-agent status
# --json`, under node['backup_agent']['status'] (automatic), the jobs whose last prune did not
# succeed in `prune_failed_jobs`, and a top-level `backup_agent_stale` flag, so the Chef server
# answers `knife search node 'backup_agent_stale:true'`. Restore drills and costs too: each job's
# last drill (result, last success, RTO estimate) and last `cost` (bytes, monthly USD), the jobs
# whose last drill failed in `drill_failed_jobs`, the node's total in `monthly_usd`, and a
# top-level `backup_agent_drill_failed` flag (`knife search node 'backup_agent_drill_failed:true'`).
#
# chef-client (>= 16) loads the plugins of its cookbooks' ohai/ directories right after syncing
# them, before any recipe compiles, and runs them on every run; the run that first installs the
# agent or changes the settings reloads it at its end, so the node is reported at once. The
# server shows the state the node had at its last converge.
#
# Only a whitelist of fields is copied: never the agent's error text (it can name the bucket or
# the endpoint), never anything from config.yaml. `knife ssh NODE 'sudo backup-agent status'`
# shows the errors.
#
# Settings (bin, config, stale_after_periods) come from a JSON file the recipe writes from node
# attributes, /etc/backup-agent/fleet_view.json unless client.rb says otherwise:
#   ohai.plugin[:backup_agent][:settings_file] = '/srv/backup-agent/fleet_view.json'

require 'json'
require 'time'

Ohai.plugin(:BackupAgent) do
  provides 'backup_agent/status', 'backup_agent_stale', 'backup_agent_drill_failed'

  # Methods, not constants: a constant in this block would land on Object, once per load.
  def default_settings
    { 'bin' => '/usr/local/bin/backup-agent', 'config' => '/etc/backup-agent/config.yaml', 'stale_after_periods' => 2 }
  end

  def settings
    path = configuration(:settings_file) || '/etc/backup-agent/fleet_view.json'
    default_settings.merge(::File.exist?(path) ? JSON.parse(::File.read(path)) : {})
  rescue JSON::ParserError, SystemCallError
    default_settings
  end

  # Fields of a job's status that are facts about its runs, safe on the Chef server.
  def job_fields
    %w(type schedule result last_start last_end last_success snapshots consecutive_failures exit_code next_run
       last_prune prune_result prune_snapshots_forgotten last_gc prune_locked_skipped
       last_drill drill_result drill_failed last_drill_success drill_rto_estimate_s drill_throughput_bytes_per_s
       stored_bytes stored_objects monthly_usd last_cost)
  end

  # How often a schedule string fires (the agent's Schedule.period_seconds, with the grammar of
  # its schedules.py and of the cookbook's Validation.schedule_period; the cases in
  # tests/fixtures/schedule_cases.json are run against all three); nil for anything else, which
  # is then never judged stale.
  def schedule_period(text)
    return unless text.is_a?(String) && text.ascii_only?
    body = text.gsub(/\A[ \t]+|[ \t]+\z/, '').split(/[ \t]+/).join(' ').downcase.delete_suffix(' utc')
    day = 86_400
    case body
    when /\Aevery ([1-9][0-9]{0,8}) (second|minute|hour|day)s?\z/
      period = Regexp.last_match(1).to_i * { 'second' => 1, 'minute' => 60, 'hour' => 3600, 'day' => day }[Regexp.last_match(2)]
      period <= 366 * day ? period : nil
    when /\Ahourly at :[0-5][0-9]\z/ then 3600
    when /\Adaily at ([01][0-9]|2[0-3]):[0-5][0-9]\z/ then day
    when /\Aweekly on (monday|tuesday|wednesday|thursday|friday|saturday|sunday) at ([01][0-9]|2[0-3]):[0-5][0-9]\z/
      7 * day
    end
  end

  def mtime(path)
    ::File.mtime(path)
  rescue SystemCallError
    nil
  end

  def parse_time(text)
    Time.iso8601(text.to_s)
  rescue ArgumentError
    nil
  end

  # A scheduled job is stale when its last success is older than `periods` of its schedule, when
  # it has failed and never succeeded, or when it has never run although the config that added it
  # is that old (no daemon is running it). Jobs without a schedule run on demand: never stale.
  def job_stale?(job, now, periods, config_written)
    period = schedule_period(job['schedule'])
    return false if period.nil?

    allowed = period * periods
    last_success = parse_time(job['last_success'])
    return now - last_success > allowed if last_success
    return true if job['consecutive_failures'].to_i > 0

    !config_written.nil? && now - config_written > allowed
  end

  def agent_status(bin, config)
    result = shell_out([bin, '-c', config, 'status', '--json'], timeout: 60)
    return [nil, "`backup-agent status --json` exited #{result.exitstatus}"] unless result.exitstatus == 0

    doc = JSON.parse(result.stdout)
    doc.is_a?(Hash) && doc['jobs'].is_a?(Array) ? [doc, nil] : [nil, 'unexpected `backup-agent status --json` output']
  rescue JSON::ParserError
    [nil, '`backup-agent status --json` printed no JSON']
  rescue Ohai::Exceptions::Exec => e # not executable, or timed out
    [nil, "`backup-agent status --json` failed: #{e.class}"]
  end

  def collect_status
    bin, config, periods = settings.values_at('bin', 'config', 'stale_after_periods')
    periods = Float(periods, exception: false) || default_settings['stale_after_periods']
    return unless ::File.executable?(bin) # the agent is not installed (yet): nothing to report

    config_written = mtime(config)
    now = Time.now
    doc, error = agent_status(bin, config)

    status = Mash.new(collected_at: now.utc.iso8601)
    if doc
      status[:daemon_running] = doc.dig('daemon', 'running') == true
      status[:jobs] = doc['jobs'].each_with_object(Mash.new) do |job, jobs|
        jobs[job['job']] = job.slice(*job_fields).merge('stale' => job_stale?(job, now, periods, config_written))
      end
      status[:stale_jobs] = status[:jobs].select { |_, job| job['stale'] }.keys.sort
      # A failed prune leaves the backups fine but storage growing: searchable on its own.
      status[:prune_failed_jobs] = status[:jobs].select { |_, job| %w(failed aborted).include?(job['prune_result']) }.keys.sort
      # Write-only nodes (storage.pruned_by: maintenance): retention is applied by the maintenance node.
      status[:prune_elsewhere_jobs] = status[:jobs].select { |_, job| job['prune_result'] == 'elsewhere' }.keys.sort
      status[:stale] = !status[:stale_jobs].empty?
      # A backup nobody could restore: searchable apart from staleness (the backups still run).
      status[:drill_failed_jobs] = status[:jobs].select { |_, job| job['drill_result'] == 'failed' }.keys.sort
      status[:drill_failed] = !status[:drill_failed_jobs].empty?
      costs = status[:jobs].values.map { |job| job['monthly_usd'] }.grep(Numeric)
      status[:monthly_usd] = costs.empty? ? nil : costs.sum.round(6)
    else
      # The agent is installed but cannot say what it did: nobody knows these backups are fine.
      status[:error] = error
      status[:stale] = true
    end
    backup_agent Mash.new(status: status)
    backup_agent_stale status[:stale]
    backup_agent_drill_failed status[:drill_failed] == true
  end

  collect_data(:default) do
    collect_status
  end
end
