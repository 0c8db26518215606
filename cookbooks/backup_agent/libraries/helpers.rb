#
# Cookbook:: backup_agent
# Library:: helpers
#
# The recipe-side glue: where the agent lives, whether it needs (re)installing, which service
# manager applies, the jobs backup_agent_job resources declared, and the config built from
# attributes, those jobs and the secrets in node.run_state.

require 'digest'
require 'json'
require 'chef/event_dispatch/base'
require 'chef/mixin/shell_out'
require_relative 'config_builder'
require_relative 'validation'

module BackupAgentCookbook
  # node.run_state keys. A wrapper cookbook may fill SECRETS itself before backup_agent::config
  # compiles (e.g. from Vault, same keys as the data bag item); the data bag is then not read.
  RUN_STATE_KEY = 'backup_agent_secrets'.freeze
  JOBS_KEY = 'backup_agent_jobs'.freeze
  FAILED_KEY = 'backup_agent_failed_resource'.freeze
  WATCH_KEY = 'backup_agent_failure_watch'.freeze
  # The agent's stop_timeout when config.yaml sets none (`backup-agent schema`), and what the
  # daemon may take beyond it: ABORT_GRACE (10 s) + NOTIFY_GRACE (5 s) in daemon.py, with room.
  AGENT_STOP_TIMEOUT = 60
  STOP_GRACE = 30

  # Split out so specs can stub them: ChefSpec runs on whatever host the specs run on.
  def self.systemd_running?
    ::File.directory?('/run/systemd/system')
  end

  def self.service_active?(name)
    Mixlib::ShellOut.new('systemctl', 'is-active', '--quiet', name).run_command.exitstatus == 0
  rescue StandardError
    false
  end

  # The pid of a running `backup-agent daemon` using this state_dir: the daemon writes it into
  # state_dir/daemon.lock, which it holds for its lifetime. The process must still be a
  # backup-agent daemon (a stale pid may belong to anything by now).
  def self.daemon_pid(state_dir)
    pid = Integer(::File.read(::File.join(state_dir, 'daemon.lock')).strip, exception: false)
    return unless pid&.positive?
    argv = ::File.read("/proc/#{pid}/cmdline").split("\0")
    pid if argv.include?('daemon') && argv.any? { |arg| arg.end_with?('backup-agent', 'backup_agent') }
  rescue SystemCallError
    nil
  end

  # Notes the first resource that fails in this run. The config file renders last (in the
  # delayed phase, once every backup_agent_job has registered its job), and Chef runs delayed
  # actions even after a failure: without this a run that died half-way would write a config
  # that lacks the jobs declared after the failure.
  class FailureWatch < Chef::EventDispatch::Base
    def initialize(run_state)
      @run_state = run_state
    end

    def resource_failed(resource, _action, _exception)
      @run_state[FAILED_KEY] ||= resource.to_s unless resource.ignore_failure
    end
  end

  module Helpers
    include Chef::Mixin::ShellOut

    def backup_agent_install_dir
      node['backup_agent']['install']['dir']
    end

    def backup_agent_bin
      ::File.join(backup_agent_install_dir, 'bin', 'backup-agent')
    end

    def backup_agent_config_path
      node['backup_agent']['config_path']
    end

    # The agent's own default when unset.
    def backup_agent_state_dir
      node['backup_agent']['config']['state_dir'] || '/var/lib/backup-agent'
    end

    # --- install ---

    def backup_agent_pip_command
      install = node['backup_agent']['install']
      command = [::File.join(backup_agent_install_dir, 'bin', 'pip'), 'install',
                 '--disable-pip-version-check', '--no-input']
      command += ['--index-url', install['index_url']] if install['index_url']
      command << '--no-index' if install['no_index']
      Array(install['find_links']).each { |link| command += ['--find-links', link] }
      command += Array(install['pip_extra_args'])
      command << "backup-agent==#{install['version']}"
    end

    # What the marker file records about the last successful install: the version in clear and
    # a digest of the pip settings (an index URL may carry credentials; the marker need not).
    def backup_agent_install_fingerprint
      install = node['backup_agent']['install']
      settings = [install['python'], install['index_url'], Array(install['find_links']),
                  install['no_index'], Array(install['pip_extra_args'])]
      "backup-agent==#{install['version']}\n" \
        "pip-settings-sha256=#{Digest::SHA256.hexdigest(JSON.generate(settings))}\n"
    end

    def backup_agent_install_marker
      ::File.join(backup_agent_install_dir, '.chef-backup-agent-install')
    end

    # True when the pinned version is installed with the current pip settings: no pip call then.
    def backup_agent_installed?
      marker = backup_agent_install_marker
      ::File.executable?(backup_agent_bin) && ::File.exist?(marker) &&
        ::File.read(marker) == backup_agent_install_fingerprint
    end

    # --- attributes, secrets, jobs and config ---

    # Compile time: every attribute problem at once, before anything changes.
    def backup_agent_check_attributes!
      BackupAgentCookbook::Validation.check_attributes!(
        BackupAgentCookbook::ConfigBuilder.plain(node['backup_agent'].to_hash)
      )
    end

    def backup_agent_secrets
      node.run_state[BackupAgentCookbook::RUN_STATE_KEY] ||=
        BackupAgentCookbook::Secrets.load(self, node['backup_agent']['data_bag'], node.chef_environment)
    end

    # What backup_agent_job resources declared in this run: name => job, or nil once deleted.
    def backup_agent_resource_jobs
      node.run_state[BackupAgentCookbook::JOBS_KEY] ||= {}
    end

    def backup_agent_register_job(name, job)
      backup_agent_resource_jobs[name] = job
    end

    def backup_agent_config
      config = BackupAgentCookbook::ConfigBuilder.build(
        settings: node['backup_agent']['config'],
        jobs: node['backup_agent']['jobs'],
        resource_jobs: backup_agent_resource_jobs,
        secrets: node.run_state[BackupAgentCookbook::RUN_STATE_KEY],
        node_name: node.name,
        environment: node.chef_environment
      )
      backup_agent_check_jobs!(config['jobs'] || {})
      config
    end

    # Render time: the merged jobs (attributes + resources) must each be complete.
    def backup_agent_check_jobs!(jobs)
      errors = jobs.flat_map do |name, job|
        BackupAgentCookbook::Validation.job_errors(job, complete: true).map do |key, message|
          "jobs.#{name}#{".#{key}" if key}: #{message} (from node['backup_agent']['jobs']['#{name}'] " \
            "and/or backup_agent_job[#{name}])"
        end
      end
      return if errors.empty?
      raise BackupAgentCookbook::ConfigError,
            "backup_agent: #{backup_agent_config_path} is left unchanged:\n  #{errors.join("\n  ")}"
    end

    # Template verification. Raises rather than returning false: on false Chef copies the
    # rejected file, credentials included, into file_cache_path/failed_validations.
    # Before the first install there is no agent to ask, and nothing old to protect either.
    def backup_agent_validate_config(path)
      return true unless ::File.executable?(backup_agent_bin)

      result = shell_out(backup_agent_bin, '-c', path, 'validate')
      return true if result.exitstatus == 0

      # The agent's one-line error is its last line on stderr (log lines may come before it).
      reason = result.stderr.to_s.lines.map(&:strip).reject { |line| line.match?(/\A[[:punct:]]*\z/) }.last.to_s
      reason = "exit status #{result.exitstatus}" if reason.empty?
      raise BackupAgentCookbook::ConfigError,
            "backup_agent: `backup-agent validate` rejected the new #{backup_agent_config_path}, " \
            "which is left unchanged: #{reason}"
    end

    # --- a failed run must not rewrite the config (see FailureWatch) ---

    def backup_agent_watch_failures
      node.run_state[BackupAgentCookbook::WATCH_KEY] ||= begin
        run_context.events.register(BackupAgentCookbook::FailureWatch.new(node.run_state))
        true
      end
    end

    # Guard of the delayed resources: true (and says why) when something failed earlier.
    def backup_agent_run_failed?(what)
      failed = node.run_state[BackupAgentCookbook::FAILED_KEY]
      return false unless failed
      Chef::Log.warn("backup_agent: not touching #{what}: #{failed} failed earlier in this run")
      true
    end

    # --- service ---

    # 'systemd' or 'none'; 'auto' means systemd only where systemd is PID 1.
    def backup_agent_service_manager
      manager = node['backup_agent']['service']['manager']
      return manager unless manager == 'auto'
      BackupAgentCookbook.systemd_running? ? 'systemd' : 'none'
    end

    def backup_agent_service_managed?
      backup_agent_service_manager == 'systemd'
    end

    # The unit's TimeoutStopSec: the daemon's stop_timeout (the agent's default when unset), plus
    # the grace it gives aborted runs (SIGINT, then SIGKILL after 10 s) and its last notifications.
    def backup_agent_timeout_stop_sec
      stop_timeout = node['backup_agent']['config']['stop_timeout'] || BackupAgentCookbook::AGENT_STOP_TIMEOUT
      (stop_timeout.to_f + BackupAgentCookbook::STOP_GRACE).ceil
    end

    def backup_agent_daemon_pid
      BackupAgentCookbook.daemon_pid(backup_agent_state_dir)
    end

    # --- bucket ---

    def backup_agent_bucket_marker
      ::File.join(backup_agent_state_dir, 'chef-bucket-setup')
    end

    # What the last successful `bucket setup` was applied from: the config (as a digest: it holds
    # credentials) and the agent version (a newer agent may set the bucket up differently).
    def backup_agent_bucket_fingerprint
      "config-sha256=#{Digest::SHA256.file(backup_agent_config_path).hexdigest}\n" \
        "agent=#{node['backup_agent']['install']['version']}\n"
    end

    def backup_agent_bucket_setup_due?
      marker = backup_agent_bucket_marker
      !(::File.exist?(marker) && ::File.read(marker) == backup_agent_bucket_fingerprint)
    end
  end
end

# Recipes, and resource blocks (guards, lazy values and verify blocks run with the resource as self).
Chef::DSL::Recipe.include(BackupAgentCookbook::Helpers)
Chef::Resource.include(BackupAgentCookbook::Helpers)
