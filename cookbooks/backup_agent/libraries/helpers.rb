#
# Cookbook:: backup_agent
# Library:: helpers
#
# The recipe-side glue: where the agent lives, whether it needs (re)installing, which service
# manager applies, the jobs backup_agent_job resources declared, and the config built from
# attributes, those jobs and the secrets in node.run_state.

require 'digest'
require 'json'
require 'yaml'
require 'chef/event_dispatch/base'
require 'chef/mixin/shell_out'
require_relative 'config_builder'
require_relative 'validation'

module BackupAgentCookbook
  # node.run_state keys. A wrapper cookbook may fill SECRETS itself before backup_agent::config
  # compiles (e.g. from Vault, same keys as the data bag item); the data bag is then not read.
  RUN_STATE_KEY = 'backup_agent_secrets'.freeze
  SECRETS_CHECKED_KEY = 'backup_agent_secrets_checked'.freeze
  JOBS_KEY = 'backup_agent_jobs'.freeze
  FAILED_KEY = 'backup_agent_failed_resource'.freeze
  WATCH_KEY = 'backup_agent_failure_watch'.freeze
  # The agent's stop_timeout when config.yaml sets none (`backup-agent schema`), and what the
  # daemon may take beyond it: ABORT_GRACE (10 s) + NOTIFY_GRACE (5 s) in daemon.py, with room.
  AGENT_STOP_TIMEOUT = 60
  STOP_GRACE = 30

  # Everything the recipes ask this machine is one of the module functions below, so specs stub
  # them (spec_helper does, for every example): ChefSpec evaluates guards on whatever host the
  # specs run on, and one where the agent is installed must give the same results as a fresh one.

  # A file's content, or nil when it is not there.
  def self.read_file(path)
    ::File.read(path)
  rescue SystemCallError
    nil
  end

  def self.executable?(path)
    ::File.executable?(path)
  end

  # The interpreter a venv was made with (pyvenv.cfg's `executable`, the real path, written by
  # Python >= 3.11), or nil when there is no venv.
  def self.venv_python(dir)
    cfg = read_file(::File.join(dir, 'pyvenv.cfg'))
    return unless cfg
    line = cfg.lines.find { |l| l.match?(/\A\s*executable\s*=/) }
    line&.split('=', 2)&.last&.strip
  end

  # The real path of an interpreter (/usr/bin/python3 -> /usr/bin/python3.11), or nil.
  def self.real_python(path)
    ::File.realpath(path)
  rescue SystemCallError
    nil
  end

  # The jobs of the config file now on disk (name => job), {} when there is none or it is not
  # a config: what a backup_agent_job compares its job with.
  def self.config_jobs(path)
    config = YAML.safe_load(read_file(path).to_s)
    jobs = config['jobs'] if config.is_a?(Hash)
    jobs.is_a?(Hash) ? jobs : {}
  rescue Psych::Exception
    {}
  end

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

    def backup_agent_wheel_name
      "backup_agent-#{node['backup_agent']['install']['version']}-py3-none-any.whl"
    end

    # The cookbook's wheel and lock, copied beside the venv (a venv made again takes them with
    # it, and the next resources bring them back).
    def backup_agent_dist_dir
      ::File.join(backup_agent_install_dir, 'dist')
    end

    def backup_agent_wheel_path
      ::File.join(backup_agent_dist_dir, backup_agent_wheel_name)
    end

    # The cookbook's lock (copied here), or the operator's own (install.lock_file).
    def backup_agent_lock_path
      node['backup_agent']['install']['lock_file'] || ::File.join(backup_agent_dist_dir, 'requirements.lock')
    end

    # The agent's extras to install (install.extras), each with a lock of what it adds.
    def backup_agent_extras
      Array(node['backup_agent']['install']['extras']).uniq
    end

    # An extra's lock, beside the main one: requirements.lock -> requirements-EXTRA.lock (as
    # `make cookbook-lock` names it), in dist/ or beside the operator's own lock_file.
    def backup_agent_extra_lock_path(extra)
      lock = backup_agent_lock_path
      ext = ::File.extname(lock)
      ::File.join(::File.dirname(lock), "#{::File.basename(lock, ext)}-#{extra}#{ext}")
    end

    # Compile time: an extra the cookbook carries no lock for stops the run before anything
    # changes (with an operator's lock_file, its extras' locks are theirs to provide).
    def backup_agent_check_extras!
      return if node['backup_agent']['install']['lock_file']
      carried = run_context.cookbook_collection['backup_agent'].files_for(:files)
                           .filter_map { |file| ::File.basename(file[:name])[/\Arequirements-(.+)\.lock\z/, 1] }.sort
      missing = backup_agent_extras - carried
      return if missing.empty?
      raise BackupAgentCookbook::ConfigError,
            "backup_agent: node['backup_agent']['install']['extras'] names #{missing.map(&:inspect).join(', ')}, but the " \
            "cookbook carries no files/agent/requirements-#{missing.first}.lock (extras it carries: " \
            "#{carried.empty? ? 'none' : carried.join(', ')})"
    end

    # sha256 of a file the cookbook carries (files/<name>), read from Chef's copy of the cookbook.
    def backup_agent_cookbook_file_sha256(name)
      cache = (node.run_state['backup_agent_cookbook_sha256'] ||= {})
      cache[name] ||= Digest::SHA256.file(backup_agent_cookbook_file(name)).hexdigest
    end

    # Raises when the cookbook has no such file (a version it does not carry), naming what it has.
    def backup_agent_cookbook_file(name)
      cookbook = run_context.cookbook_collection['backup_agent']
      cookbook.preferred_filename_on_disk_location(node, :files, name)
    rescue Chef::Exceptions::FileNotFound
      carried = cookbook.files_for(:files).map { |file| ::File.basename(file[:name]) }.grep(/\Abackup_agent-.*\.whl\z/)
      raise BackupAgentCookbook::ConfigError,
            "backup_agent: node['backup_agent']['install']['version'] is #{node['backup_agent']['install']['version'].inspect}, " \
            "but the cookbook carries no files/#{name} (it carries: #{carried.sort.join(', ')})"
    end

    def backup_agent_wheel_sha256
      backup_agent_cookbook_file_sha256("agent/#{backup_agent_wheel_name}")
    end

    # An operator's lock is read on the node when the guard asks (a wrapper may write it in this run).
    def backup_agent_lock_sha256
      lock_file = node['backup_agent']['install']['lock_file']
      return backup_agent_cookbook_file_sha256('agent/requirements.lock') unless lock_file
      Digest::SHA256.hexdigest(BackupAgentCookbook.read_file(lock_file).to_s)
    end

    def backup_agent_extra_lock_sha256(extra)
      return backup_agent_cookbook_file_sha256("agent/requirements-#{extra}.lock") unless node['backup_agent']['install']['lock_file']
      Digest::SHA256.hexdigest(BackupAgentCookbook.read_file(backup_agent_extra_lock_path(extra)).to_s)
    end

    # True when the venv was made with the Python install['python'] is now (by real path: a
    # python3 that an upgrade moved to another minor version leaves a venv that cannot work).
    def backup_agent_venv_current?
      made_with = BackupAgentCookbook.venv_python(backup_agent_install_dir)
      !made_with.nil? && made_with == BackupAgentCookbook.real_python(node['backup_agent']['install']['python'])
    end

    # Step 1: the dependencies, exactly as the lock pins them (every file's sha256), from the
    # operator's mirror. The sources reach pip through its environment (backup_agent_pip_env),
    # so a URL's credentials are in no process's arguments.
    def backup_agent_deps_command
      [::File.join(backup_agent_install_dir, 'bin', 'pip'), 'install', '--disable-pip-version-check', '--no-input',
       '--require-hashes', '--only-binary', ':all:', '-r', backup_agent_lock_path] +
        backup_agent_extras.flat_map { |extra| ['-r', backup_agent_extra_lock_path(extra)] } +
        Array(node['backup_agent']['install']['pip_extra_args'])
    end

    def backup_agent_pip_env
      install = node['backup_agent']['install']
      env = {}
      env['PIP_INDEX_URL'] = install['index_url'] if install['index_url']
      env['PIP_FIND_LINKS'] = Array(install['find_links']).join(' ') unless Array(install['find_links']).empty?
      env['PIP_NO_INDEX'] = '1' if install['no_index']
      env
    end

    # Step 2: the agent from the cookbook's wheel and nothing else: no index, no dependencies
    # (step 1 has them), and reinstalled even at the same version (a rebuilt wheel).
    def backup_agent_pip_command
      [::File.join(backup_agent_install_dir, 'bin', 'pip'), 'install', '--disable-pip-version-check', '--no-input',
       '--no-index', '--no-deps', '--force-reinstall', backup_agent_wheel_path]
    end

    # True when a pip source carries credentials (https://user:token@host/..., also inside an
    # argument such as --extra-index-url=...): the install steps are then sensitive, so Chef
    # prints neither their environment nor pip's output.
    def backup_agent_pip_credentials?
      install = node['backup_agent']['install']
      [install['index_url'], *Array(install['find_links']), *Array(install['pip_extra_args'])].compact.any? do |value|
        value.to_s.match?(%r{[a-z][a-z0-9+.-]*://[^/\s@]*@}i)
      end
    end

    # What the marker file records about the last successful install: the version in clear,
    # the cookbook's wheel and lock and the pip settings as digests (an index URL may carry
    # credentials; the marker need not).
    def backup_agent_install_fingerprint
      install = node['backup_agent']['install']
      settings = [install['python'], install['index_url'], Array(install['find_links']),
                  install['no_index'], Array(install['pip_extra_args'])]
      extras = backup_agent_extras.map { |extra| "extra=#{extra} lock-sha256=#{backup_agent_extra_lock_sha256(extra)}\n" }
      "backup-agent==#{install['version']}\n" \
        "wheel-sha256=#{backup_agent_wheel_sha256}\n" \
        "lock-sha256=#{backup_agent_lock_sha256}\n" \
        "#{extras.join}" \
        "pip-settings-sha256=#{Digest::SHA256.hexdigest(JSON.generate(settings))}\n"
    end

    def backup_agent_install_marker
      ::File.join(backup_agent_install_dir, '.chef-backup-agent-install')
    end

    # True when this wheel, this lock and these pip settings are installed: no pip call then.
    def backup_agent_installed?
      BackupAgentCookbook.executable?(backup_agent_bin) &&
        BackupAgentCookbook.read_file(backup_agent_install_marker) == backup_agent_install_fingerprint
    end

    # --- attributes, secrets, jobs and config ---

    # Compile time: every attribute problem at once, before anything changes.
    def backup_agent_check_attributes!
      BackupAgentCookbook::Validation.check_attributes!(
        BackupAgentCookbook::ConfigBuilder.plain(node['backup_agent'].to_hash)
      )
    end

    # Once per run: the data bag item, or what a wrapper cookbook put in node.run_state before
    # this recipe compiled, checked the same way; the checked values replace what was there.
    def backup_agent_secrets
      state = node.run_state
      return state[BackupAgentCookbook::RUN_STATE_KEY] if state[BackupAgentCookbook::SECRETS_CHECKED_KEY]

      provided = state[BackupAgentCookbook::RUN_STATE_KEY]
      state[BackupAgentCookbook::RUN_STATE_KEY] =
        if provided.nil?
          backup_agent_load_secrets
        else
          BackupAgentCookbook::Secrets.from_run_state(provided, "node.run_state['#{BackupAgentCookbook::RUN_STATE_KEY}']")
        end
      state[BackupAgentCookbook::SECRETS_CHECKED_KEY] = true
      state[BackupAgentCookbook::RUN_STATE_KEY]
    end

    # From the store node['backup_agent']['secrets']['source'] names; each goes through the same checks.
    def backup_agent_load_secrets
      store = node['backup_agent']['secrets']
      data_bag = node['backup_agent']['data_bag']
      case store['source']
      when 'chef_vault' then BackupAgentCookbook::Secrets.load_vault(self, data_bag, node.chef_environment, node.policy_group)
      when 'secret' then BackupAgentCookbook::Secrets.load_service(self, store)
      else BackupAgentCookbook::Secrets.load(self, data_bag, node.chef_environment, node.policy_group)
      end
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
        settings: backup_agent_config_settings, # libraries/storage_cluster.rb: + storage.endpoints
        jobs: node['backup_agent']['jobs'],
        resource_jobs: backup_agent_resource_jobs,
        secrets: node.run_state[BackupAgentCookbook::RUN_STATE_KEY],
        node_name: node.name,
        # On a Policyfile node the policy group says where it runs (Chef 18 copies it into chef_environment too).
        environment: node.policy_group || node.chef_environment
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
      return true unless BackupAgentCookbook.executable?(backup_agent_bin)

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

    # The unit file's text: systemd_unit compares it with the file byte for byte, so a run with
    # nothing new writes nothing (and reloads and restarts nothing).
    def backup_agent_unit_content
      service = node['backup_agent']['service']
      lines = [
        '# Managed by Chef (cookbook backup_agent); local changes are overwritten on the next converge.',
        '[Unit]',
        'Description=backup-agent: scheduled backups to S3',
        'Wants=network-online.target',
        'After=network-online.target',
        '',
        '[Service]',
        'Type=simple',
        "ExecStart=#{backup_agent_bin} -c #{backup_agent_config_path} daemon",
        '# SIGHUP makes the agent re-read its config without interrupting a running job.',
        'ExecReload=/bin/kill -HUP $MAINPID',
        'Restart=on-failure',
        'RestartSec=30',
        '# On stop only the daemon gets SIGTERM (KillMode=control-group would signal every running backup',
        '# at once); it lets runs finish up to stop_timeout, then aborts them. systemd waits that long plus',
        "# the daemon's own grace before it kills what is left.",
        'KillMode=mixed',
        "TimeoutStopSec=#{backup_agent_timeout_stop_sec}",
        'Environment=PYTHONUNBUFFERED=1',
      ]
      lines << "Nice=#{service['nice']}" unless service['nice'].nil?
      lines << "IOSchedulingClass=#{service['io_scheduling_class']}" unless service['io_scheduling_class'].nil?
      lines += ['', '[Install]', 'WantedBy=multi-user.target']
      lines.join("\n") + "\n"
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
      "config-sha256=#{Digest::SHA256.hexdigest(BackupAgentCookbook.read_file(backup_agent_config_path).to_s)}\n" \
        "agent=#{node['backup_agent']['install']['version']}\n"
    end

    def backup_agent_bucket_setup_due?
      BackupAgentCookbook.read_file(backup_agent_bucket_marker) != backup_agent_bucket_fingerprint
    end
  end
end

# The recipe DSL only: recipes, and the action_class of backup_agent_job (action classes have the
# recipe DSL). Not every Chef::Resource: that put these names on every resource of every cookbook
# on the node. Resource blocks run with the resource as self, so the recipes reach the helpers
# through a local there (`helpers = self`).
Chef::DSL::Recipe.include(BackupAgentCookbook::Helpers)
